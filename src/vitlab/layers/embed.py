"""Turning an image into tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vitlab.layers.grouping import pad_to_multiple


def to_2tuple(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A first convolution trained on RGB, for `in_chans` channels (as timm does, so its users meet the same).

    One channel: the sum of the three filters, which on a grey image (R = G = B) computes exactly what
    the RGB filters computed. Other counts: the filters repeated cyclically and scaled by 3 / in_chans,
    which keeps the output's scale.
    """
    if weight.shape[1] != 3:
        raise ValueError(f"expected the weight of a 3-channel convolution, got {tuple(weight.shape)}")
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)


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

    input_conv = "proj"  # the convolution that sees the image (its weight adapts to other channel counts)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(pad_to_multiple(x, self.patch_size))
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class ConvStem(nn.Module):
    """A 3x3 conv-BN-ReLU per entry of `channels` (stride 2 unless `strides` says otherwise), then a
    1x1 conv to `embed_dim` (Xiao et al. 2021, "Early Convolutions Help Transformers See Better", section 3).

    Same interface as PatchEmbed: (B, C, H, W) -> tokens (B, N, D) and the grid (H', W'), with a
    total stride (`patch_size`) of the product of the strides; sides that do not divide are zero-padded.
    """

    def __init__(self, channels: Sequence[int], in_chans: int, embed_dim: int, strides: Sequence[int] | None = None):
        super().__init__()
        strides = list(strides) if strides is not None else [2] * len(channels)
        if len(strides) != len(channels):
            raise ValueError(f"{len(channels)} stem channels but {len(strides)} strides")
        layers, chs = [], in_chans
        for width, stride in zip(channels, strides, strict=True):
            layers += [nn.Conv2d(chs, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            chs = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(chs, embed_dim, 1)
        self.patch_size = to_2tuple(math.prod(strides))
        self.in_chans = in_chans

    input_conv = "convs.0"

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(self.convs(pad_to_multiple(x, self.patch_size)))
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])


class ConvEmbed(nn.Module):
    """A strided convolution followed by LayerNorm over channels: NCHW in, channels-last (B, H, W, C) out.

    The convolutional stem of CSWin and Pale: an overlapping 7x7 kernel, stride 4, padding 2.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int, padding: int, eps: float = 1e-5):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(out_chans, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class ConvMerge(ConvEmbed):
    """`ConvEmbed` between the stages of a pyramid (3x3, stride 2, padding 1): channels-last in and out."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 3, 1, 2))
