"""SegFormer (Xie et al. 2021, NeurIPS): a Mix Transformer encoder and an all-MLP decoder.

The encoder, MiT (section 3.1), is PVT v2's pyramid under another name: overlapping patch
embedding (7x7 stride 4, then 3x3 stride 2), efficient self-attention whose keys and values come
from a map reduced by a strided convolution (ratio R = 8, 4, 2, 1 per side; the paper writes
R^2 = 64, 16, 4, 1 in sequence terms), and Mix-FFN (fc1, a 3x3 depthwise convolution, GELU, fc2;
expansion 4 in every stage), each stage ending in its own LayerNorm. So `MixVisionTransformer`
is `PyramidVisionTransformerV2` with MiT's defaults, nothing copied: its parameters keep PVT v2's
(timm's) names, and the official `backbone.patch_embed1` / `backbone.block1.0` names convert on
load like PVT v2's official files (`layouts/segformer.py`). LayerNorm eps are the official code's:
1e-6 in blocks and stage norms, 1e-5 in the patch embeddings and reductions (HF transformers
uses 1e-5 everywhere, which its config reader sets).

The decoder (section 3.2, eq. 1): each level's map is projected to a common width C by a linear
layer (`linear_c{i}`), upsampled bilinearly (align_corners False) to the first level's size
(stride 4), the four maps are concatenated in the official order [c4, c3, c2, c1], fused by a
1x1 convolution without bias + BatchNorm + ReLU (`linear_fuse.conv` / `.bn`), dropped out
(Dropout2d, 0.1, as the official head; HF uses element-wise Dropout) and classified by a 1x1
convolution (`linear_pred`). Names are the official release's, so its head loads as it is
(minus the unused `conv_seg` its base class leaves in every checkpoint). C is 256 for B0/B1 and
768 for B2-B5, as in the official configs.

The head takes any backbone that offers multi-scale features: `create_model("segformer_b0",
backbone="swin_tiny_patch4_window7_224", backbone_args=...)` reads channels and strides from the
backbone's `feature_info` (its `default_out_indices` levels, or `feature_levels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.models.pvt import PyramidVisionTransformerV2
from vitlab.registry import Preprocess, register_model
from vitlab.segmentation.base import SegmentationModel, SegmentationOutput, build_backbone
from vitlab.weights import Weights


class MixVisionTransformer(PyramidVisionTransformerV2):
    """MiT-B0..B5: PVT v2 with a Mix-FFN expansion of 4 in every stage (see the module docstring).

    As a classifier (the ImageNet-1k models NVlabs released), the mean of the last stage's
    normalised tokens goes through `head`, as PVT v2's does.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        *,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        **kwargs: Any,
    ):
        super().__init__(img_size, embed_dims=embed_dims, depths=depths, mlp_ratios=mlp_ratios, **kwargs)


class LinearEmbed(nn.Module):
    """A linear layer over the channels of an NCHW map (`proj`), the decoder's per-level MLP."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        # A contiguous NCHW result: a channels-last one would carry its layout through the upsampling,
        # the fuse layer and the classifier into the loss, whose softmax over channels then copies it.
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class ConvBNReLU(nn.Module):
    """1x1 convolution (no bias: BatchNorm follows), BatchNorm, ReLU: mmcv's ConvModule names (`conv`, `bn`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class AllMLPHead(nn.Module):
    """SegFormer's decoder over feature maps given finest first; logits at the first map's size."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.num_levels = len(in_channels)
        for i, channels in enumerate(in_channels):
            self.add_module(f"linear_c{i + 1}", LinearEmbed(channels, embed_dim))
        self.linear_fuse = ConvBNReLU(embed_dim * self.num_levels, embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != self.num_levels:
            raise ValueError(f"the decoder was built for {self.num_levels} feature maps, got {len(features)}")
        size = features[0].shape[-2:]
        maps = []
        for i, fmap in enumerate(features):
            y = getattr(self, f"linear_c{i + 1}")(fmap)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            maps.append(y)
        x = self.linear_fuse(torch.cat(maps[::-1], dim=1))  # the official order: coarsest first
        return self.linear_pred(self.dropout(x))


class SegFormer(SegmentationModel):
    """An encoder with the all-MLP decoder; logits at the encoder's finest level (stride 4 for MiT).

    `backbone` is a registered name (built without a classifier, with `backbone_args`, `in_chans`,
    `img_size` and `drop_path_rate`) or a model instance. `img_size` is the training crop; MiT has
    no size-dependent parameters, so it only reaches backbones that have some.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "mit_b0",
        num_classes: int = 150,
        decoder_dim: int = 256,
        dropout: float = 0.1,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 512,
        drop_path_rate: float = 0.1,
        backbone_args: dict[str, Any] | None = None,
        feature_levels: Sequence[int] | None = None,
    ):
        super().__init__(num_classes, in_chans)
        args = {**dict(in_chans=in_chans, img_size=img_size, drop_path_rate=drop_path_rate), **(backbone_args or {})}
        self.backbone = build_backbone(backbone, **args) if isinstance(backbone, str) else build_backbone(backbone)
        self.feature_levels = tuple(self.backbone.default_out_indices if feature_levels is None else feature_levels)
        levels = [self.backbone.feature_info[i] for i in self.feature_levels]
        self.decode_head = AllMLPHead([level["num_chs"] for level in levels], num_classes, decoder_dim, dropout)
        self.output_stride = levels[0]["reduction"]
        self.min_input_size = getattr(self.backbone, "min_input_size", 1)
        self.input_conv = f"backbone.{self.backbone.input_conv}" if hasattr(self.backbone, "input_conv") else None
        self._init_head()

    @property
    def classifier_keys(self) -> tuple[str, ...]:
        """The per-class layer, which fine-tuning on another label set re-initialises (ADE20K -> Cityscapes)."""
        return ("decode_head.linear_pred",)

    @torch.no_grad()
    def _init_head(self) -> None:
        for module in self.decode_head.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward_logits(self, x: Tensor) -> SegmentationOutput:
        self.check_input(x)
        return SegmentationOutput(self.decode_head(self.backbone.forward_intermediates(x, self.feature_levels)))


_REFERENCE = "SegFormer: Xie et al. 2021 (NVlabs/SegFormer, mix_transformer.py and segformer_head.py; HF Segformer)"
_TINY_MIT = dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))
_WIDE = (64, 128, 320, 512)
_MIT = {  # name: (embed_dims, depths, decoder width, ADE20K mIoU, Cityscapes mIoU (paper, single scale))
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256, 37.4, 76.2),
    "b1": (_WIDE, (2, 2, 2, 2), 256, 42.2, 78.5),
    "b2": (_WIDE, (3, 4, 6, 3), 768, 46.5, 81.0),
    "b3": (_WIDE, (3, 4, 18, 3), 768, 49.4, 81.7),
    "b4": (_WIDE, (3, 8, 27, 3), 768, 50.3, 82.3),
    "b5": (_WIDE, (3, 6, 40, 3), 768, 51.0, 82.4),
}


def _nvidia(tag: str, repo: str, num_classes: int = 1000) -> Weights:
    """NVlabs' released weights as converted to HF transformers' layout (class names in its config.json)."""
    return Weights(tag, hf_hub_id=f"nvidia/{repo}", filename="pytorch_model.bin", layout="hf",
                   config_file="config.json", num_classes=num_classes, classes=None, license="other")  # fmt: skip


for _b, (_dims, _depths, _width, _ade, _city) in _MIT.items():
    register_model(
        f"mit_{_b}",
        MixVisionTransformer,
        dict(embed_dims=_dims, depths=_depths),
        f"{_REFERENCE}: mit_{_b} (ImageNet-1k)",
        tiny=_TINY_MIT,
        preprocess=Preprocess((3, 224, 224), crop_pct=0.9),
        weights=[_nvidia("in1k", f"mit-{_b}")],  # ImageNet-1k names come with the config
    )
    _ade_size = 640 if _b == "b5" else 512  # the official B5 is trained on 640x640 crops
    for _suffix, _tag, _classes, _size, _miou in [
        ("", "ade", 150, _ade_size, _ade),
        ("_cityscapes", "cityscapes", 19, 1024, _city),
    ]:
        register_model(
            f"segformer_{_b}{_suffix}",
            SegFormer,
            dict(backbone=f"mit_{_b}", num_classes=_classes, decoder_dim=_width, img_size=_size),
            f"{_REFERENCE}: segformer.{_b}." + (f"{_size}x{_size}.ade" if _classes == 150 else "1024x1024.city"),
            task="semantic-segmentation",
            num_classes=_classes,
            tiny=dict(backbone_args=_TINY_MIT, decoder_dim=16),
            preprocess=Preprocess((3, _size, _size), crop_pct=1.0, interpolation="bilinear"),
            paper=dict(miou=_miou),
            weights=[_nvidia(_tag, f"segformer-{_b}-finetuned-{_tag}-{_size}-{_size}", _classes)],
        )
