"""Token groupings for local attention: each groups tokens into independent sequences before one attend() call.

A grouping maps a channels-last map (B, H, W, C) to a batch of sequences (B * groups, L, C) and
back. The attention layer projects q, k, v, groups them with the same function, calls `attend()`
once on the whole batch of groups, and ungroups the result. Maps whose sides do not divide into
whole groups are zero-padded on the bottom and right; the padded tokens are then excluded from
every softmax by a boolean key mask (built once per size and cached), so they never change what
the real tokens compute, and the padded outputs are cropped away.

Sections, one per scheme: shared padding helpers; cross-shaped window stripes (CSWin); pale
groups (Pale); axes (Axial-DeepLab); neighbourhoods (stand-alone self-attention); windows and
shifted windows (Swin, with its `WindowAttention` layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers.attention import AttentionLayer, attend
from vitlab.layers.embed import to_2tuple

Size2 = tuple[int, int]


def pad_bottom_right(x: Tensor, padded: tuple[int, int]) -> Tensor:
    """Zero-pad a channels-last map (B, H, W, C) on the bottom and right to `padded` = (Hp, Wp)."""
    pad_h, pad_w = padded[0] - x.shape[1], padded[1] - x.shape[2]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def _key_mask(grouped_valid: Tensor) -> Tensor:
    """(groups, L, 1) validity (1 real, 0 padded) -> bool key mask (groups, 1, 1, L)."""
    return grouped_valid[..., 0].bool()[:, None, None, :]


def _valid_map(size: tuple[int, int], padded: tuple[int, int], device: torch.device) -> Tensor:
    valid = torch.zeros(1, padded[0], padded[1], 1, device=device)
    valid[:, : size[0], : size[1]] = 1.0
    return valid


# ---------------------------------------------------------------------------------------------
# Cross-shaped window stripes (CSWin, Dong et al. 2022)
# ---------------------------------------------------------------------------------------------
# A stripe is a (sh, sw) rectangle: a vertical stripe spans the full height (sh = H, sw = stripe
# width), a horizontal one the full width (sh = stripe width, sw = W). Stripes are ordered in
# raster order over the map, one sequence per stripe, tokens in raster order inside a stripe.


def image_to_stripes(x: Tensor, stripe: tuple[int, int]) -> Tensor:
    """(B, H, W, C) -> (B * H/sh * W/sw, sh * sw, C); H and W must be multiples of the stripe sides."""
    B, H, W, C = x.shape
    sh, sw = stripe
    x = x.view(B, H // sh, sh, W // sw, sw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, sh * sw, C)


def stripes_to_image(x: Tensor, stripe: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of `image_to_stripes`: (B * groups, sh * sw, C) -> (B, H, W, C) for `size` = (H, W)."""
    sh, sw = stripe
    H, W = size
    C = x.shape[-1]
    x = x.view(-1, H // sh, W // sw, sh, sw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def stripe_layout(
    size: tuple[int, int], stripe: tuple[int | None, int | None]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The stripe shape and the padded map size for a map of `size`.

    `stripe` = (sh, sw) with None meaning "the full side". A stripe wider than the map shrinks to
    the map (one stripe covers it: the same tokens as a padded wide stripe, without the padding).
    """
    sh = size[0] if stripe[0] is None else min(stripe[0], size[0])
    sw = size[1] if stripe[1] is None else min(stripe[1], size[1])
    padded = (-(-size[0] // sh) * sh, -(-size[1] // sw) * sw)
    return (sh, sw), padded


@lru_cache(maxsize=64)
def stripe_key_mask(
    size: tuple[int, int], padded: tuple[int, int], stripe: tuple[int, int], device: torch.device
) -> Tensor | None:
    """Bool mask (stripes, 1, 1, sh * sw), True at real tokens; None when nothing is padded. Cached per size."""
    if size == padded:
        return None
    return _key_mask(image_to_stripes(_valid_map(size, padded, device), stripe))


# ---------------------------------------------------------------------------------------------
# Pale groups: interlaced rows and interlaced columns (Pale Transformer, Wu et al. 2022)
# ---------------------------------------------------------------------------------------------
# A map of H rows split into N row groups of s rows each (H = N * s) puts row y into group
# y mod N: every group holds s rows spaced N apart, spanning the whole height ("interlaced").
# Columns are grouped the same way. For H not a multiple of s, N = ceil(H / s) groups are used and
# the map is padded to N * s rows, so some groups hold s - 1 real rows (the padding is masked).


def pale_groups(length: int, size: int) -> int:
    """Number of interlaced groups N for a side of `length` tokens and groups of `size` lines."""
    return -(-length // size)


def image_to_row_groups(x: Tensor, groups: int) -> Tensor:
    """(B, H, W, C) -> (B * N, H/N * W, C): rows y with the same y mod N form one sequence."""
    B, H, W, C = x.shape
    x = x.view(B, H // groups, groups, W, C).transpose(1, 2)
    return x.reshape(B * groups, -1, C)


def row_groups_to_image(x: Tensor, groups: int, size: tuple[int, int]) -> Tensor:
    """Inverse of `image_to_row_groups` for a map of `size` = (H, W)."""
    H, W = size
    C = x.shape[-1]
    x = x.view(-1, groups, H // groups, W, C).transpose(1, 2)
    return x.reshape(-1, H, W, C)


def image_to_column_groups(x: Tensor, groups: int) -> Tensor:
    """(B, H, W, C) -> (B * N, H * W/N, C): columns x with the same x mod N form one sequence."""
    B, H, W, C = x.shape
    x = x.view(B, H, W // groups, groups, C).permute(0, 3, 1, 2, 4)
    return x.reshape(B * groups, -1, C)


def column_groups_to_image(x: Tensor, groups: int, size: tuple[int, int]) -> Tensor:
    """Inverse of `image_to_column_groups` for a map of `size` = (H, W)."""
    H, W = size
    C = x.shape[-1]
    x = x.view(-1, groups, H, W // groups, C).permute(0, 2, 3, 1, 4)
    return x.reshape(-1, H, W, C)


@lru_cache(maxsize=64)
def pale_key_mask(
    size: tuple[int, int], padded: tuple[int, int], groups: int, axis: str, device: torch.device
) -> Tensor | None:
    """Bool mask (N, 1, 1, L) of the row (`axis="rows"`) or column groups, True at real tokens.

    None when nothing is padded. Cached per size.
    """
    if size == padded:
        return None
    valid = _valid_map(size, padded, device)
    grouped = image_to_row_groups(valid, groups) if axis == "rows" else image_to_column_groups(valid, groups)
    return _key_mask(grouped)


def batch_mask(mask: Tensor | None, batch: int) -> Tensor | None:
    """Repeat a per-group mask (groups, 1, 1, L) for a batch laid out batch-major: (batch * groups, 1, 1, L)."""
    return None if mask is None else mask.repeat(batch, 1, 1, 1)


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


# ---------------------------------------------------------------------------------------------
# Windows and shifted windows (Swin Transformer, Liu et al. 2021, section 3.2)
# ---------------------------------------------------------------------------------------------
# Self-attention is computed inside non-overlapping M x M windows (W-MSA). Every other block
# first rolls the map up-left by M // 2 (SW-MSA), so the new windows straddle the old ones' borders;
# windows that the roll assembled from non-adjacent parts of the image are masked so tokens only
# attend within their own part. A learned relative position bias B, indexed by the offset between
# two tokens of a window, is added to the logits (eq. 4).
#
# Any map size works: the map is zero-padded at the bottom and right to a multiple of the window
# before the roll (as the official detection/segmentation code and HF transformers do), and
# cropped back afterwards; a side no longer than the window is one window along that side and is
# not shifted. Pad, roll and partition are applied together as one precomputed permutation of the
# tokens (`window_token_order`), and so is their inverse: no torch.roll in the forward pass.


def window_partition(x: Tensor, window: Size2) -> Tensor:
    """Cut a (B, H, W, C) map into windows: (B * num_windows, wh * ww, C).

    Windows come in raster order within each image, tokens in raster order within each window.
    H and W must be multiples of the window sides.
    """
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


@dataclass(frozen=True)
class WindowGeometry:
    """How a map of `size` is cut into windows: the window and shift used and the padded size."""

    size: Size2
    window: Size2
    shift: Size2
    padded: Size2

    @property
    def num_windows(self) -> int:
        return (self.padded[0] // self.window[0]) * (self.padded[1] // self.window[1])

    @property
    def window_area(self) -> int:
        return self.window[0] * self.window[1]


def window_geometry(size: Size2, window: Size2, shift: Size2) -> WindowGeometry:
    """Window and shift for a map of `size`, side by side.

    A side no longer than the window is covered by one window of exactly that length and is not
    shifted: shifting it would only wrap tokens around inside the same window. This is the
    official rule (`min(resolution) <= window_size`), applied to each side separately as timm
    does, so that e.g. a 7 x 20 map with window 7 still shifts along its width. Other sides are
    padded up to a multiple of the window.
    """
    win = tuple(min(w, s) for w, s in zip(window, size, strict=True))
    shf = tuple(0 if s <= w else t for s, w, t in zip(size, window, shift, strict=True))
    padded = tuple(-(-s // w) * w for s, w in zip(size, win, strict=True))
    return WindowGeometry(tuple(size), win, shf, padded)


def relative_position_index(window: Size2, table_window: Size2 | None = None) -> Tensor:
    """Index into a relative-position table for every (query, key) pair of a window: (N, N), N = wh * ww.

    The table of a `table_window` (Th, Tw) has (2Th - 1)(2Tw - 1) rows, one per offset
    (dy, dx) in [-(Th-1), Th-1] x [-(Tw-1), Tw-1], stored row-major: row (dy + Th - 1) * (2Tw - 1) + dx + Tw - 1
    (Swin section 3.2, "relative position bias"). A window smaller than the table's (a side clamped
    to a small map) uses the central rows of the same table.
    """
    (wh, ww), (th, tw) = window, table_window or window
    if wh > th or ww > tw:
        raise ValueError(f"window {window} is larger than the relative-position table's window {(th, tw)}")
    grid = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack(grid).flatten(1)  # (2, N): the (row, column) of each token
    offset = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return (offset[0] + th - 1) * (2 * tw - 1) + offset[1] + tw - 1


def _shift_bands(length: int, window: int, shift: int) -> tuple[slice, ...]:
    """The stretches of one side that the cyclic roll by `shift` brings together in the last window."""
    if shift == 0:
        return (slice(None),)
    return slice(0, -window), slice(-window, -shift), slice(-shift, None)


def shifted_window_mask(padded: Size2, window: Size2, shift: Size2) -> Tensor:
    """Additive attention mask of shifted windows: (num_windows, N, N) of 0 and -100.

    After the roll by -shift, the last window row and column hold tokens from up to 3 x 3
    regions of the (padded) map that were not neighbours in the image. Labelling the regions as
    the official code does (slices [0, -M), [-M, -s), [-s, end) of each side) and cutting the label
    map into windows, a pair of tokens with different labels gets -100: small enough that softmax
    gives it no weight, yet finite (the official value, kept for exact parity).
    """
    labels = torch.zeros(padded)
    region = 0
    for rows in _shift_bands(padded[0], window[0], shift[0]):
        for cols in _shift_bands(padded[1], window[1], shift[1]):
            labels[rows, cols] = region
            region += 1
    labels = window_partition(labels[None, :, :, None], window).squeeze(-1)  # (num_windows, N)
    different = labels.unsqueeze(1) != labels.unsqueeze(2)
    return torch.zeros(different.shape).masked_fill(different, -100.0)


def resize_relative_position_table(table: Tensor, window: Size2, old_window: Size2 | None = None) -> Tensor:
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


def crop_relative_position_table(table: Tensor, window: Size2, old_window: Size2) -> Tensor:
    """The rows of a larger window's table that a smaller window uses (its central offsets), exactly."""
    old = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    new = (2 * window[0] - 1, 2 * window[1] - 1)
    top, left = old_window[0] - window[0], old_window[1] - window[1]
    grid = table.reshape(*old, -1)[top : top + new[0], left : left + new[1]]
    return grid.reshape(new[0] * new[1], -1).contiguous()


def window_token_order(geometry: WindowGeometry) -> tuple[Tensor, Tensor | None, Tensor]:
    """Pad, cyclic shift and window partition of a map, as one permutation of its tokens.

    Returns `gather` (num_windows * N,): for each slot of the windowed sequence, the raster index of
    the token that fills it (0 for padding slots); `padding`: the padding slots, or None; and
    `scatter` (H * W,): for each token of the map, its slot. `x.index_select(1, gather)` on
    (B, H * W, C) tokens, padding slots zeroed, then does pad + roll(-shift) + `window_partition` in
    one copy, and `y.index_select(1, scatter)` undoes all three (crop included) in another, where
    the straightforward F.pad, torch.roll, permute and crop each copy the whole map. Computed with
    plain index arithmetic (no data-dependent shapes), so it also traces for torch.export.
    """
    (H, W), (Hp, Wp) = geometry.size, geometry.padded
    (wh, ww), (sh, sw) = geometry.window, geometry.shift

    def slot(rows: Tensor, cols: Tensor) -> Tensor:
        """Where the token at (row, col) of the padded map lands after roll(-shift) and partition."""
        rows, cols = (rows - sh) % Hp, (cols - sw) % Wp
        window = (rows // wh) * (Wp // ww) + cols // ww
        return window * (wh * ww) + (rows % wh) * ww + cols % ww

    def grid(rows: range, cols: range) -> tuple[Tensor, Tensor]:
        r, c = torch.meshgrid(torch.arange(rows.start, rows.stop), torch.arange(cols.start, cols.stop), indexing="ij")
        return r.flatten(), c.flatten()

    scatter = slot(*grid(range(H), range(W)))
    gather = torch.zeros(Hp * Wp, dtype=torch.long)
    gather[scatter] = torch.arange(H * W)
    # Padding: the rows below the map, then the columns right of it.
    blocks = [grid(range(H, Hp), range(Wp)), grid(range(H), range(W, Wp))]
    blocks = [b for b, n in zip(blocks, ((Hp - H) * Wp, H * (Wp - W)), strict=True) if n]
    padding = slot(torch.cat([r for r, _ in blocks]), torch.cat([c for _, c in blocks])) if blocks else None
    return gather, padding, scatter


@dataclass(frozen=True)
class WindowLayout:
    """Everything a WindowAttention needs for one map size, computed once and cached."""

    geometry: WindowGeometry
    gather: Tensor  # see window_token_order
    padding: Tensor | None
    scatter: Tensor
    index: Tensor  # (N * N,) rows of the relative-position table
    mask: Tensor | None  # (num_windows, N, N) shifted-window mask, None without shift


class _PermuteTokens(torch.autograd.Function):
    """`x.index_select(1, index)` for an index that is a permutation of the live tokens.

    The backward is the inverse gather, `grad.index_select(1, inverse)`, instead of autograd's
    zero-fill + index_add (several times slower on CPU). Slots listed in `dead_out` are zeroed in the
    output (padding); tokens listed in `dead_in` feed no output slot, so get no gradient.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, index: Tensor, inverse: Tensor, dead_out: Tensor | None, dead_in: Tensor | None
    ) -> Tensor:
        ctx.save_for_backward(inverse, dead_in)
        y = x.index_select(1, index)
        return y if dead_out is None else y.index_fill_(1, dead_out, 0.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        inverse, dead_in = ctx.saved_tensors
        grad = grad.index_select(1, inverse)
        if dead_in is not None:
            grad.index_fill_(1, dead_in, 0.0)
        return grad, None, None, None, None


def group_windows(tokens: Tensor, layout: WindowLayout) -> Tensor:
    """(B, H * W, C) tokens -> (B, num_windows * N, C): padded, shifted and cut into windows."""
    return _PermuteTokens.apply(tokens, layout.gather, layout.scatter, layout.padding, None)


def ungroup_windows(windows: Tensor, layout: WindowLayout) -> Tensor:
    """(B, num_windows * N, C) -> (B, H * W, C): the inverse of `group_windows`, padding dropped."""
    return _PermuteTokens.apply(windows, layout.scatter, layout.gather, None, layout.padding)


class WindowAttention(AttentionLayer):
    """Window multi-head self-attention, W-MSA, or shifted W-MSA with `shift_size` > 0 (Swin eq. 4).

    Takes and returns a (B, H, W, C) map. Parameter names follow timm and the official release
    (`qkv`, `proj`, `relative_position_bias_table`); `relative_position_index` is a non-persistent
    buffer as in timm. All windows of the batch go through one `attend()` call, with the relative
    position bias and the shift mask folded into its additive `bias`; attention capture therefore
    reports per-window probabilities, (B * num_windows, heads, N, N).
    """

    max_cached_layouts = 16

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | Size2 = 7,
        shift_size: int | Size2 = 0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        resolution: Size2 | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.resolution = resolution  # the map size at the model's img_size (what checkpoint buffers are made for)
        self.window_size = to_2tuple(window_size)
        self.shift_size = to_2tuple(shift_size)
        if any(not 0 <= s < w for s, w in zip(self.shift_size, self.window_size, strict=True)):
            raise ValueError(f"shift {self.shift_size} must lie in [0, window) for window {self.window_size}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self._layouts: dict[tuple, WindowLayout] = {}

    def layout(self, size: Size2, device: torch.device) -> WindowLayout:
        """The geometry, table index and mask for a map of `size`, built on first use and then reused.

        Only size-dependent integers and constants are cached, never the gathered bias: that is a
        function of the learned table, so it is gathered again in every forward (a tiny
        (heads, N, N) lookup) and stays differentiable and current after every optimiser step.
        """
        key = (tuple(size), device)
        cached = self._layouts.get(key)
        if cached is not None:
            return cached
        geometry = window_geometry(tuple(size), self.window_size, self.shift_size)
        # Ordinary tensors even when first built under inference_mode, so that a later training step
        # can use (and save for backward) the same cached indices.
        with torch.inference_mode(False), torch.no_grad():
            if geometry.window == self.window_size:
                index = self.relative_position_index.clone()
            else:
                index = relative_position_index(geometry.window, self.window_size)
            shifted = any(geometry.shift)
            mask = shifted_window_mask(geometry.padded, geometry.window, geometry.shift) if shifted else None
            gather, padding, scatter = window_token_order(geometry)
            layout = WindowLayout(
                geometry,
                gather.to(device),
                None if padding is None else padding.to(device),
                scatter.to(device),
                index.reshape(-1).to(device),
                None if mask is None else mask.to(device),
            )
        if len(self._layouts) >= self.max_cached_layouts:
            self._layouts.pop(next(iter(self._layouts)))
        self._layouts[key] = layout
        return layout

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        layout = self.layout((H, W), x.device)
        N = layout.geometry.window_area
        windows = group_windows(x.reshape(B, H * W, C), layout)
        qkv = self.qkv(windows.view(-1, N, C)).view(-1, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        # index_select, not table[index]: the same gather, several times faster on CPU.
        bias = self.relative_position_bias_table.index_select(0, layout.index).view(N, N, -1).permute(2, 0, 1)
        if layout.mask is None:
            bias = bias.unsqueeze(0).to(q.dtype)
        else:
            # Window w of every image gets mask w: combine at (num_windows, heads, N, N) and repeat per image.
            bias = (bias.unsqueeze(0) + layout.mask.unsqueeze(1)).to(q.dtype)
            bias = bias.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(-1, self.num_heads, N, N)
        dropout_p = self.attn_drop if self.training else 0.0
        out = attend(q, k, v, bias=bias, dropout_p=dropout_p, store=self.attention_store)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, -1, C)))
        return ungroup_windows(out, layout).view(B, H, W, C)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}, shift_size={self.shift_size}"
