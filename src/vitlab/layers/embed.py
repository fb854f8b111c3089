"""Turning an image into tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def to_2tuple(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def pad_to_multiple(x: Tensor, multiple: tuple[int, int]) -> Tensor:
    """Zero-pad an NCHW map on the bottom and right so both sides divide by `multiple`."""
    pad_h = -x.shape[-2] % multiple[0]
    pad_w = -x.shape[-1] % multiple[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project each (Dosovitskiy et al., eq. 1).

    A strided convolution does the split and the linear map at once (`proj`). Inputs whose sides
    are not multiples of the patch size are zero-padded on the bottom and right. Returns the
    tokens (B, N, D) in raster order and the grid size (H', W').
    """

    def __init__(
        self,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: type[nn.Module] | None = None,
        bias: bool = True,
    ):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}")
        x = self.proj(pad_to_multiple(x, self.patch_size))
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class ConvEmbed(nn.Module):
    """A strided convolution followed by LayerNorm over channels: NCHW in, channels-last (B, H, W, C) out.

    The convolutional stem and the downsampling (merging) layers of CSWin and Pale: overlapping
    kernels (7x7 stride 4 padding 2 for the stem, 3x3 stride 2 padding 1 between stages).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int, padding: int, eps: float = 1e-5):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(out_chans, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))
