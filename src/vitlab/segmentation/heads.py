"""Small pieces the segmentation decoders share: conv-BN-ReLU, channel-wise LayerNorm on a map, upsampling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias: the norm has one), BatchNorm, ReLU; indexed 0, 1, 2 as mmseg-era checkpoints name them."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


def channel_layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """A LayerNorm over the channels of an NCHW map: the token-wise LayerNorm of the tokens it came from."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def upsample(x: Tensor, scale: int, align_corners: bool = False) -> Tensor:
    """Bilinear upsampling of an NCHW map by an integer `scale` (to exactly scale * h, scale * w)."""
    if scale == 1:
        return x
    size = (x.shape[-2] * scale, x.shape[-1] * scale)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def checkpoint_only_conv(in_channels: int, num_classes: int) -> nn.Conv2d:
    """mmseg's `BaseDecodeHead` creates a 1x1 `conv_seg` in every head, also in heads that classify with a
    layer of their own (SETR's, SegFormer's). It never runs, but the released checkpoints hold it, so a
    strict load needs it; `unused_parameter_names()` of the model lists it."""
    return nn.Conv2d(in_channels, num_classes, 1)
