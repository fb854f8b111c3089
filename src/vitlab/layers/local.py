"""Token groupings for local attention: each groups tokens into independent sequences before one attend() call.

A grouping maps a channels-last map (B, H, W, C) to a batch of sequences (B * groups, L, C) and
back. The attention layer projects q, k, v, groups them with the same function, calls `attend()`
once on the whole batch of groups, and ungroups the result. Maps whose sides do not divide into
whole groups are zero-padded on the bottom and right; the padded tokens are then excluded from
every softmax by a boolean key mask (built once per size and cached), so they never change what
the real tokens compute, and the padded outputs are cropped away.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


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
