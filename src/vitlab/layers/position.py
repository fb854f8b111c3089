"""Positional encodings: fixed sinusoids, the resizing of learned tables to a new grid, and every
relative-position table (Swin's 2-D window table, Axial-DeepLab's 1-D axis table, SASA's row and
column embeddings): how they are indexed, cropped and resized."""

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


def exporting() -> bool:
    """Whether a graph is being recorded for export (the ONNX tracer, torch.export) rather than run.

    Shape-dependent branches must not be decided then: the branch taken at the traced size would be
    baked into the graph for every size (`layers.grouping` imports this as `is_tracing`). So an exported
    graph resamples a position table at every size, its own included: resampling to the
    same size is the identity (cubic or linear weights at whole-pixel offsets are 1 and 0), while a
    branch on the size would be frozen into the graph, which would then refuse every other size (or
    the model's own).
    """
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


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
    if not exporting() and tuple(new_size) == tuple(old_size):  # see exporting(): no comparison traced
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_size), mode=mode, antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


# ---------------------------------------------------------------------------------------------
# Relative positions in 2-D windows (Swin, Liu et al. 2021, section 3.2, "relative position bias")
# ---------------------------------------------------------------------------------------------


def relative_position_index(window: tuple[int, int], table_window: tuple[int, int] | None = None) -> Tensor:
    """Index into a relative-position table for every (query, key) pair of a window: (N, N), N = wh * ww.

    The table of a `table_window` (Th, Tw) has (2Th - 1)(2Tw - 1) rows, one per offset
    (dy, dx) in [-(Th-1), Th-1] x [-(Tw-1), Tw-1], stored row-major: row (dy + Th - 1) * (2Tw - 1) + dx + Tw - 1.
    A window smaller than the table's (a side clamped to a small map) uses the central rows of the
    same table.
    """
    (wh, ww), (th, tw) = window, table_window or window
    if wh > th or ww > tw:
        raise ValueError(f"window {window} is larger than the relative-position table's window {(th, tw)}")
    grid = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack(grid).flatten(1)  # (2, N): the (row, column) of each token
    offset = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return (offset[0] + th - 1) * (2 * tw - 1) + offset[1] + tw - 1


def resize_relative_position_table(
    table: Tensor, window: tuple[int, int], old_window: tuple[int, int] | None = None
) -> Tensor:
    """Resample a ((2h-1)(2w-1), heads) relative-position table to `window`, bicubically.

    As the official Swin fine-tuning code does when a 224/window-7 checkpoint is trained further
    at 384/window-12 (`load_pretrained`: bicubic, align_corners=False, no antialiasing). The old
    window defaults to the square one the table's length implies.
    """
    rows, heads = table.shape
    if old_window is None:
        side = round(rows**0.5)
        if side * side != rows or side % 2 == 0:
            raise ValueError(f"a relative-position table of {rows} rows is not the table of a square window")
        old_window = ((side + 1) // 2,) * 2
    old = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    new = (2 * window[0] - 1, 2 * window[1] - 1)
    if old[0] * old[1] != rows:
        raise ValueError(f"a relative-position table of {rows} rows does not belong to window {old_window}")
    if old == new:
        return table
    grid = table.T.reshape(1, heads, *old).float()
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).T.contiguous().to(table.dtype)


def crop_relative_position_table(table: Tensor, window: tuple[int, int], old_window: tuple[int, int]) -> Tensor:
    """The rows of a larger window's table that a smaller window uses (its central offsets), exactly."""
    old = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    new = (2 * window[0] - 1, 2 * window[1] - 1)
    top, left = old_window[0] - window[0], old_window[1] - window[1]
    grid = table.reshape(*old, -1)[top : top + new[0], left : left + new[1]]
    return grid.reshape(new[0] * new[1], -1).contiguous()


# ---------------------------------------------------------------------------------------------
# Relative positions along one axis (Axial-DeepLab, Wang et al. 2020, section 3.1)
# ---------------------------------------------------------------------------------------------


def relative_index_1d(span: int, device: torch.device | None = None) -> Tensor:
    """(span, span) indices into a (2 span - 1)-long table: entry [i, j] is i - j + span - 1."""
    positions = torch.arange(span, device=device)
    return positions[:, None] - positions[None, :] + span - 1


def resize_relative_table_1d(table: Tensor, length: int) -> Tensor:
    """A (C, 2K-1) table of offsets -(K-1)..K-1 -> (C, length) for another span (length odd).

    Shorter: the middle entries (the same offsets). Longer: linear interpolation with the end
    points aligned, so offset 0 stays offset 0 and the extreme offsets map to the new extremes.
    """
    old = table.shape[-1]
    if length <= old:
        start = (old - length) // 2
        return table[..., start : start + length]
    work = torch.float64 if table.dtype == torch.float64 else torch.float32
    return F.interpolate(table[None].to(work), size=length, mode="linear", align_corners=True)[0].to(table.dtype)


# ---------------------------------------------------------------------------------------------
# Row- and column-offset embeddings of a k x k neighbourhood (SASA, Ramachandran et al. 2019, eq. 3)
# ---------------------------------------------------------------------------------------------


def row_column_embeddings(rows: Tensor, cols: Tensor, num_heads: int) -> Tensor:
    """r_{a-i,b-j} for every position of a k x k window, per head: (heads, k * k, d), row offset major.

    `rows` and `cols` are the (k, C/2) row-offset and column-offset tables. Head n's r concatenates
    its slice (C/2N channels) of each table, so every head sees both offsets; d = C / heads.
    """
    k, half = rows.shape[0], rows.shape[1] // num_heads
    r = rows.view(k, 1, num_heads, half).expand(k, k, num_heads, half)
    c = cols.view(1, k, num_heads, half).expand(k, k, num_heads, half)
    return torch.cat([r, c], dim=-1).reshape(k * k, num_heads, 2 * half).transpose(0, 1)
