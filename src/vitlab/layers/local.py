"""Token groupings for local attention: each groups tokens into independent sequences before one attend() call"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Axes: every column (or every row) of a map is one sequence (Axial-DeepLab, Wang et al. 2020)
# ---------------------------------------------------------------------------------------------

AXES = ("height", "width")


def _check_axis(axis: str) -> None:
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")


def axial_sequences(x: Tensor, axis: str) -> Tensor:
    """(B, C, H, W) -> channel-first sequences along one axis.

    `axis="height"` makes every column a sequence: (B * W, C, H); `axis="width"` makes every row
    one: (B * H, C, W). Channel-first, so that 1-D convolutions and batch norms apply directly.
    """
    _check_axis(axis)
    x = x.permute(0, 3, 1, 2) if axis == "height" else x.permute(0, 2, 1, 3)
    return x.reshape(-1, x.shape[2], x.shape[3])


def merge_axial_sequences(x: Tensor, batch: int, axis: str) -> Tensor:
    """The inverse of `axial_sequences`: (B * W, C, H) or (B * H, C, W) -> (B, C, H, W)."""
    _check_axis(axis)
    x = x.view(batch, -1, x.shape[1], x.shape[2])
    if axis == "height":
        return x.permute(0, 2, 3, 1)
    return x.permute(0, 2, 1, 3)


# ---------------------------------------------------------------------------------------------
# Neighbourhoods: the k x k window centred on every pixel is one key/value set
# (Stand-Alone Self-Attention, Ramachandran et al. 2019)
# ---------------------------------------------------------------------------------------------


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"a neighbourhood is centred on its pixel, so kernel_size must be odd, got {kernel_size}")


def neighbourhoods(x: Tensor, kernel_size: int) -> Tensor:
    """(B, C, H, W) -> (B, H * W, k * k, C), contiguous: the k x k window centred on each pixel.

    Pixels are in raster order and window positions too (row offset major, both offsets running
    from -(k-1)/2 to (k-1)/2). Positions outside the map are zeros; `neighbourhood_mask` tells
    which ones they are, so that attention can leave them out.
    """
    _check_kernel(kernel_size)
    B, C, H, W = x.shape
    p = kernel_size // 2
    # Channels last before gathering, so that each copied window position is one contiguous run of C.
    x = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, p, p, p)).contiguous()
    windows = x.unfold(1, kernel_size, 1).unfold(2, kernel_size, 1)  # (B, H, W, C, k, k), a view
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(B, H * W, kernel_size * kernel_size, C)


def neighbourhood_mask(height: int, width: int, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """(H * W, k * k) bool: True where a pixel's window position lies inside the map."""
    _check_kernel(kernel_size)
    ones = torch.ones(1, 1, height, width, device=device)
    return neighbourhoods(ones, kernel_size)[0, :, :, 0] > 0
