"""Deformable sampling (DAT, Xia et al. 2022, section 3.2): where deformable attention takes its keys.

A uniform grid of reference points covers the key map. An offset network, run on the queries of
each group of channels, predicts a 2-D offset per point; the offsets are bounded by
`tanh(o) * s / (Hk, Wk)` (the offset range factor s, in normalised units of the map) and added to
the reference points; keys and values are then bilinearly sampled from the map at the moved points,
for each group separately. All groups share the reference grid; each has its own offsets.

Coordinates follow the CVPR 2022 release exactly, since its checkpoints were trained with them:
points are kept as (y, x) in [-1, 1], reference points are pixel *centres*,
`(i + 0.5) / H * 2 - 1`, yet sampling uses `grid_sample(..., align_corners=True)`, which reads -1
and 1 as the centres of the first and last pixels. Even at zero offset the keys are therefore
interpolated between neighbouring pixels. Positions outside [-1, 1] read zeros beyond the border.

The reference grid depends only on the map size, so it is the plan of this scheme, built once per
size and served from the shared plan cache (in float64, cast to the input's dtype when used). The
scheme's `group` is the split of a map's channels into the offset groups, (B * groups, C / groups,
H, W), which is how the offset network and the sampling see them; `ungroup` is its inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.layers.grouping import Grouping, Plan, Size2, in_graph, size_tensor


@dataclass(frozen=True, eq=False)
class ReferencePlan(Plan):
    """The reference points of a map of `size`: (H, W, 2) normalised (y, x) pixel centres, float64."""

    points: Tensor


@dataclass(frozen=True)
class DeformablePoints(Grouping):
    """Reference points moved by learned offsets, `groups` sets of them, offsets bounded by `offset_range_factor`."""

    groups: int
    offset_range_factor: float
    traceable = True  # in a graph (`in_graph`) the grid comes from the traced sizes, as in `build`

    def __post_init__(self) -> None:
        if self.groups < 1 or self.offset_range_factor <= 0:
            raise ValueError(
                f"deformable sampling needs groups >= 1 and offset_range_factor > 0, "
                f"got {self.groups} and {self.offset_range_factor}"
            )

    def build(self, size: Size2, device: torch.device) -> ReferencePlan:
        H, W = size
        if in_graph():  # the same values (i + 0.5, exact in float64), from sizes that may be traced
            rows = torch.arange(H, dtype=torch.float64, device=device) + 0.5
            cols = torch.arange(W, dtype=torch.float64, device=device) + 0.5
        else:
            rows = torch.linspace(0.5, H - 0.5, H, dtype=torch.float64, device=device)
            cols = torch.linspace(0.5, W - 0.5, W, dtype=torch.float64, device=device)
        y, x = torch.meshgrid(rows, cols, indexing="ij")
        points = torch.stack((y.div(H).mul(2).sub(1), x.div(W).mul(2).sub(1)), dim=-1)
        return ReferencePlan(size, size, points)

    def group(self, x: Tensor, plan: Plan | None = None) -> Tensor:
        """(B, H, W, C) -> (B * groups, C / groups, H, W): each group's channels, channels first.

        The split does not depend on the map size, so no plan is needed.
        """
        B, H, W, C = x.shape
        return x.permute(0, 3, 1, 2).reshape(B * self.groups, C // self.groups, H, W)

    def ungroup(self, y: Tensor, plan: Plan | None = None) -> Tensor:
        """(B * groups, C / groups, H, W) -> (B, H, W, C), the inverse of `group`."""
        _, Cg, H, W = y.shape
        return y.reshape(-1, self.groups * Cg, H, W).permute(0, 2, 3, 1)

    def positions(self, offsets: Tensor, plan: ReferencePlan) -> Tensor:
        """Raw offsets (B * groups, 2, Hk, Wk) of the offset network -> sampling positions (B * groups, Hk, Wk, 2).

        `plan` is that of the key grid (Hk, Wk). Positions are normalised (y, x): the reference points
        plus the offsets bounded as in section 3.2, `tanh(offset) * offset_range_factor / (Hk, Wk)`.
        """
        Hk, Wk = plan.size
        if in_graph():  # 1 / Hk, 1 / Wk divided in float64 as Python divides, from sizes that may be traced
            sides = torch.stack([size_tensor(Hk), size_tensor(Wk)]).to(torch.float64)
            scale = sides.reciprocal().to(offsets.dtype).view(1, 2, 1, 1)
        else:
            scale = offsets.new_tensor([1.0 / Hk, 1.0 / Wk]).view(1, 2, 1, 1)
        offsets = offsets.tanh().mul(scale).mul(self.offset_range_factor)
        return offsets.permute(0, 2, 3, 1) + plan.points.to(offsets.dtype)

    @staticmethod
    def sample(grouped: Tensor, positions: Tensor) -> Tensor:
        """Bilinearly sample grouped maps (B * groups, Cg, H, W) at `positions` -> (B * groups, Cg, Hk, Wk)."""
        return F.grid_sample(grouped, positions.flip(-1), mode="bilinear", align_corners=True)

    @staticmethod
    def to_pixels(positions: Tensor, size: Size2) -> Tensor:
        """Normalised (y, x) positions -> (x, y) pixel coordinates of a map of `size`, as `sample` reads them.

        With align_corners=True, -1 and 1 are the centres of the first and last pixel, so pixel
        coordinate x = (u + 1) / 2 * (W - 1); the map spans [-0.5, W - 0.5] in these coordinates.
        """
        H, W = size
        y, x = positions.unbind(-1)
        return torch.stack(((x + 1) / 2 * (W - 1), (y + 1) / 2 * (H - 1)), dim=-1)
