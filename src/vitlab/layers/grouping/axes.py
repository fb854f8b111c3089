"""Axes: every column (or every row) of a map is one sequence (Axial-DeepLab, Wang et al. 2020, section 3.2).

Factorising 2-D attention into a column pass and a row pass gives each pixel a global receptive
field at O(hw(h + w)) cost. Sequences are channel-first, (B * W, C, H) for columns, so that the 1-D
convolutions and batch norms of the axial layer apply to them directly. Nothing is padded: the
plan only records the map size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vitlab.layers.grouping import Grouping, Plan, Size2, check_axis


@dataclass(frozen=True)
class Axes(Grouping):
    """One sequence per column (`axis="columns"`, the paper's height axis) or per row (`"rows"`, its width axis)."""

    axis: str
    traceable = True  # the plan is the size itself

    def __post_init__(self) -> None:
        check_axis(self.axis)

    def build(self, size: Size2, device: torch.device) -> Plan:
        return Plan(size, size)

    def group(self, x: Tensor, plan: Plan) -> Tensor:
        """(B, C, H, W) -> (B * W, C, H) for columns, (B * H, C, W) for rows."""
        x = x.permute(0, 3, 1, 2) if self.axis == "columns" else x.permute(0, 2, 1, 3)
        return x.reshape(-1, x.shape[2], x.shape[3])

    def ungroup(self, y: Tensor, plan: Plan) -> Tensor:
        """(B * W, C, H) or (B * H, C, W) -> (B, C, H, W)."""
        H, W = plan.size
        if self.axis == "columns":
            return y.view(-1, W, y.shape[1], H).permute(0, 2, 3, 1)
        return y.view(-1, H, y.shape[1], W).permute(0, 2, 1, 3)
