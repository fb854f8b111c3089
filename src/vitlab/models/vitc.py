"""ViT with a convolutional stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better").

The patchify stem (one stride-p convolution) is replaced by a few stride-2 3x3 convolutions with
BatchNorm and ReLU, and a final 1x1 convolution to the embedding width (their section 3). The
paper finds that this makes ViTs converge faster, tolerate more learning rates and optimisers,
and gain accuracy at the same compute; on small images it is what lets a small transformer learn
in a few epochs. Everything after the stem is the ViT of `vit.py` (class token, position table,
pre-norm blocks), so every ViT tool (attention capture, any input size, layer-wise lr decay) works.

vitlab's variants are small configurations for 28-32 px images (the paper's are for ImageNet and
have no public reference implementation); their state dict is vitlab's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vitlab.layers.embed import pad_to_multiple, to_2tuple
from vitlab.models.vit import VisionTransformer
from vitlab.registry import INCEPTION_MEAN, INCEPTION_STD, register_model


class ConvStem(nn.Module):
    """A 3x3 conv-BN-ReLU per entry of `channels` (stride 2 unless `strides` says otherwise), then a
    1x1 conv to `embed_dim` (Xiao et al., section 3).

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

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}")
        x = self.proj(self.convs(pad_to_multiple(x, self.patch_size)))
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])


class ConvStemViT(VisionTransformer):
    """VisionTransformer whose patch embedding is a `ConvStem` with `stem_channels` and `stem_strides`."""

    def __init__(
        self,
        stem_channels: Sequence[int] = (32, 64),
        stem_strides: Sequence[int] | None = None,
        in_chans: int = 3,
        embed_dim: int = 192,
        **kwargs,
    ):
        stride = math.prod(stem_strides) if stem_strides is not None else 2 ** len(stem_channels)
        super().__init__(patch_size=stride, in_chans=in_chans, embed_dim=embed_dim, **kwargs)
        self.patch_embed = ConvStem(stem_channels, in_chans, embed_dim, stem_strides)


_REFERENCE = "ViT_C: Xiao et al. 2021 (convolutional stem); small-image configuration of vitlab"
register_model(
    "vitc_tiny_s4_32",
    ConvStemViT,
    dict(img_size=32, stem_channels=(32, 64), embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, global_pool="avg"),
    _REFERENCE,
    input_size=(3, 32, 32),
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    crop_pct=1.0,
)
