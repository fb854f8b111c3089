"""Positional encodings: fixed sinusoids and the resizing of learned tables to a new grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sinusoidal_1d(length: int, dim: int, base: float = 10000.0) -> Tensor:
    """The fixed encoding of Vaswani et al. (section 3.5), shape (length, dim).

    PE(pos, 2i) = sin(pos / base^(2i/dim)) and PE(pos, 2i+1) = cos(...): sines and cosines
    interleave, as in the paper.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encodings need an even dim, got {dim}")
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    frequency = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table.float()


def sinusoidal_2d(height: int, width: int, dim: int, base: float = 10000.0) -> Tensor:
    """A 2-D grid encoding, shape (height * width, dim), rows in raster order.

    The first half of the channels encodes the row index, the second half the column index,
    each with `sinusoidal_1d`.
    """
    if dim % 4:
        raise ValueError(f"2-D sinusoidal encodings need dim divisible by 4, got {dim}")
    rows = sinusoidal_1d(height, dim // 2, base)
    cols = sinusoidal_1d(width, dim // 2, base)
    grid = torch.cat([rows[:, None, :].expand(height, width, -1), cols[None, :, :].expand(height, width, -1)], dim=-1)
    return grid.reshape(height * width, dim)


def resize_pos_embed(
    pos_embed: Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> Tensor:
    """Resample a learned (1, prefix + H*W, D) table to a (new_h, new_w) grid.

    Only the grid part is interpolated; the prefix slots (class and distillation tokens) are kept
    as they are. `old_size` defaults to a square grid. Interpolation runs in float32 with
    antialiasing when shrinking, as timm does, so resized checkpoints agree with timm's.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    num_grid = grid.shape[1]
    if old_size is None:
        side = int(round(num_grid**0.5))
        if side * side != num_grid:
            raise ValueError(f"position table has {num_grid} grid entries, which is not a square: pass old_size")
        old_size = (side, side)
    if old_size[0] * old_size[1] != num_grid:
        raise ValueError(f"position table has {num_grid} grid entries, not {old_size[0]}x{old_size[1]}")
    if tuple(new_size) == tuple(old_size):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_size), mode=mode, antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
