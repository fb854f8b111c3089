"""Neighbourhoods: the k x k window centred on every pixel is its key/value set
(Stand-Alone Self-Attention, Ramachandran et al. 2019, section 3.1, eq. 2).

Unlike the other schemes the groups overlap: every pixel is a query sequence of its own, and its
keys and values are gathered from the window around it. Window positions outside the map are
zeros in the gathered keys and values and are left out of the softmax by the plan's mask, so a
border pixel attends over fewer positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.layers.grouping import Grouping, Plan, Size2, is_tracing


def neighbourhoods(x: Tensor, kernel_size: int) -> Tensor:
    """(B, C, H, W) -> (B, H * W, k * k, C), contiguous: the k x k window centred on each pixel.

    Pixels are in raster order and window positions too (row offset major, both offsets running
    from -(k-1)/2 to (k-1)/2). Positions outside the map are zeros.
    """
    B, C, H, W = x.shape
    p = kernel_size // 2
    # Channels last before gathering, so that each copied window position is one contiguous run of C.
    x = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, p, p, p)).contiguous()
    windows = x.unfold(1, kernel_size, 1).unfold(2, kernel_size, 1)  # (B, H, W, C, k, k), a view
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(B, H * W, kernel_size * kernel_size, C)


@dataclass(frozen=True, eq=False)
class NeighbourhoodPlan(Plan):
    """The window positions inside a map of `size`."""

    mask: Tensor  # (H * W, 1, 1, k * k) bool, True where a pixel's window position lies inside the map


@dataclass(frozen=True)
class Neighbourhoods(Grouping):
    """The `kernel_size` x `kernel_size` window centred on each pixel (k odd)."""

    kernel_size: int

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"a neighbourhood is centred on its pixel, so kernel_size must be odd, got {self.kernel_size}"
            )

    def plan(self, size: Size2, device: torch.device | str) -> NeighbourhoodPlan:
        """As `Grouping.plan`; while a graph is exported (the ONNX tracer, torch.export), built in the graph
        from the traced or symbolic sizes (not the cache's Python integers, which would fix the height and
        width), so that an exported graph masks the neighbourhoods of the size it is given."""
        if is_tracing():
            return self.build(size, torch.device(device))
        return super().plan(size, device)

    def build(self, size: Size2, device: torch.device) -> NeighbourhoodPlan:
        ones = torch.ones(1, 1, size[0], size[1], device=device)
        inside = neighbourhoods(ones, self.kernel_size)[0, :, :, 0] > 0
        return NeighbourhoodPlan(size, size, inside[:, None, None, :])

    def group(self, x: Tensor, plan: NeighbourhoodPlan) -> Tensor:
        """(B, C, H, W) -> (B * H * W, k * k, C): the keys (or values) each pixel attends to."""
        return neighbourhoods(x, self.kernel_size).flatten(0, 1)

    def ungroup(self, y: Tensor, plan: NeighbourhoodPlan) -> Tensor:
        """(B * H * W, C), one output per pixel -> (B, C, H, W)."""
        return y.view(-1, plan.size[0], plan.size[1], y.shape[-1]).permute(0, 3, 1, 2)
