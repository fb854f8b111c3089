"""SETR (Zheng et al., CVPR 2021, "Rethinking Semantic Segmentation from a Sequence-to-Sequence
Perspective with Transformers"): a plain ViT encoder and three decoders (section 3.3).

- *Naive* upsampling: the last layer's patch tokens, LayerNorm, 1x1 conv-BN-ReLU, 1x1 conv to the
  classes, one bilinear upsampling to the image.
- *PUP*, progressive upsampling: four 3x3 conv-BN-ReLU, each followed by a 2x bilinear upsampling
  (the last one after the 1x1 classifier), so no single step upsamples more than 2x.
- *MLA*, multi-level feature aggregation: four layers of the encoder (6, 12, 18, 24 of ViT-L),
  each LayerNorm-ed and projected, summed top-down, refined by 3x3 convolutions; each stream
  upsampled 4x, concatenated, and classified by a 3x3 conv.

Everything follows the official release (fudan-zvg/SETR, mmseg 0.x): its module and parameter names
(`decode_head.conv_0`, `syncbn_fc_0`, `auxiliary_head.N.*`, the never-used `conv_seg` that mmseg's
base head creates), the LayerNorm eps 1e-6 of the heads, an encoder without a final LayerNorm, the
MLA encoder dropping the class token *before* the blocks, the MLA streams upsampled with
align_corners=True, and the auxiliary heads of the released configs (loss weight 0.4): Naive, three
Naive heads on layers 10, 15, 20; PUP, four heads (3x3 conv-BN-ReLU, 4x up, 1x1 classifier) on
layers 10, 15, 20, 24; MLA, a 1x1 classifier on each of the four aggregated maps.
Where we differ: the official heads reshape tokens into a square and resize to a fixed `img_size`;
here maps keep the input's shape (any size, the position table resized), and logits come at the
decoder's stride, `forward` resizing them to the input (the same single bilinear resize).
The only difference in module tree: the MLA neck (`norm_0..3`, `mla`) lives in `neck`, not inside
`backbone`, so any backbone can feed it (`layouts/setr.py` renames the official keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vitlab.models.vit import VisionTransformer
from vitlab.registry import IMAGENET, Preprocess, register_model
from vitlab.segmentation.base import SegmentationModel, SegmentationOutput, build_backbone
from vitlab.segmentation.heads import channel_layer_norm, checkpoint_only_conv, conv_bn_relu, upsample

DECODERS = ("naive", "pup", "mla")
AUX_WEIGHT = 0.4  # loss weight of every auxiliary head in the released configs
CONV_SEG_CHANNELS = 512  # `channels` of the released configs: the width of the unused conv_seg
# ViT-L's layers (0-based) that the released configs read: decoder input, auxiliary heads, MLA levels.
VIT_L_LAYERS = dict(main=23, naive_aux=(9, 14, 19), pup_aux=(9, 14, 19, 23), mla=(5, 11, 17, 23))


class SETRUpHead(nn.Module):
    """The Naive and PUP decoders and their auxiliary heads (official `VisionTransformerUpHead`).

    LayerNorm on the map's channels, then `num_convs` conv-BN-ReLU layers (`conv_i`, `syncbn_fc_i`),
    the 1x1 classifier (`conv_{num_convs}`), and a bilinear upsampling by `scales[i]` after each of
    them (len(scales) == num_convs + 1). Naive: 1 conv, kernel 1, scales (1, 1); PUP: 4 convs, kernel 3,
    scales (2, 2, 2, 1, 2); PUP's auxiliary heads: 1 conv, kernel 3, scales (4, 1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        num_convs: int = 1,
        kernel_size: int = 1,
        scales: Sequence[int] = (1, 1),
        channels: int = 256,
        in_index: int = -1,
        align_corners: bool = False,
    ):
        super().__init__()
        if len(scales) != num_convs + 1:
            raise ValueError(f"SETRUpHead needs {num_convs + 1} scales (after each conv and the classifier)")
        self.in_index = in_index
        self.num_convs = num_convs
        self.scales = tuple(scales)
        self.align_corners = align_corners
        self.norm = nn.LayerNorm(in_channels, eps=1e-6)
        for i in range(num_convs):
            width = in_channels if i == 0 else channels
            self.add_module(f"conv_{i}", nn.Conv2d(width, channels, kernel_size, padding=kernel_size // 2))
            self.add_module(f"syncbn_fc_{i}", nn.BatchNorm2d(channels))
        self.add_module(f"conv_{num_convs}", nn.Conv2d(channels, num_classes, 1))
        self.conv_seg = checkpoint_only_conv(CONV_SEG_CHANNELS, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = channel_layer_norm(self.norm, x)
        for i in range(self.num_convs):
            x = getattr(self, f"syncbn_fc_{i}")(getattr(self, f"conv_{i}")(x)).relu()
            x = upsample(x, self.scales[i], self.align_corners)
        x = getattr(self, f"conv_{self.num_convs}")(x)
        return upsample(x, self.scales[-1], self.align_corners)


class ConvMLA(nn.Module):
    """MLA's aggregation (official `Conv_MLA`): 1x1 projections `mla_pX_1x1`, top-down sums
    (p4 += p5, p3 += p4, p2 += p3), then a 3x3 conv-BN-ReLU `mla_pX` on each sum."""

    def __init__(self, in_channels: Sequence[int], mla_channels: int = 256):
        super().__init__()
        for level, width in zip(range(2, 6), in_channels, strict=True):
            self.add_module(f"mla_p{level}_1x1", conv_bn_relu(width, mla_channels, 1))
        for level in range(2, 6):
            self.add_module(f"mla_p{level}", conv_bn_relu(mla_channels, mla_channels, 3))

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        lateral = [getattr(self, f"mla_p{level}_1x1")(x) for level, x in zip(range(2, 6), maps, strict=True)]
        summed = [lateral[3]]
        for x in reversed(lateral[:3]):
            summed.insert(0, summed[0] + x)
        return [getattr(self, f"mla_p{level}")(x) for level, x in zip(range(2, 6), summed, strict=True)]


class MLANeck(nn.Module):
    """A LayerNorm per level (`norm_0..3`, eps 1e-6) and the aggregation (`mla`)."""

    def __init__(self, in_channels: Sequence[int], mla_channels: int = 256):
        super().__init__()
        for i, width in enumerate(in_channels):
            self.add_module(f"norm_{i}", nn.LayerNorm(width, eps=1e-6))
        self.mla = ConvMLA(in_channels, mla_channels)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        return self.mla([channel_layer_norm(getattr(self, f"norm_{i}"), x) for i, x in enumerate(maps)])


class MLAStreams(nn.Module):
    """Per level `head{2..5}`: two 3x3 conv-BN-ReLU, then 4x bilinear upsampling with align_corners=True."""

    def __init__(self, mla_channels: int, head_channels: int):
        super().__init__()
        for level in range(2, 6):
            stream = [*conv_bn_relu(mla_channels, head_channels, 3), *conv_bn_relu(head_channels, head_channels, 3)]
            self.add_module(f"head{level}", nn.Sequential(*stream))

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        streams = [getattr(self, f"head{level}")(x) for level, x in zip(range(2, 6), maps, strict=True)]
        return torch.cat([upsample(x, 4, align_corners=True) for x in streams], dim=1)


class SETRMLAHead(nn.Module):
    """MLA's decoder (official `VIT_MLAHead`): the four streams, concatenated, a 3x3 classifier `cls`."""

    def __init__(self, num_classes: int, mla_channels: int = 256, head_channels: int = 128):
        super().__init__()
        self.mlahead = MLAStreams(mla_channels, head_channels)
        self.cls = nn.Conv2d(4 * head_channels, num_classes, 3, padding=1)
        self.conv_seg = checkpoint_only_conv(CONV_SEG_CHANNELS, num_classes)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        return self.cls(self.mlahead(maps))


class SETRMLAAuxHead(nn.Module):
    """MLA's auxiliary head on one aggregated map (official `VIT_MLA_AUXIHead`): a 1x1 conv `aux`, no bias."""

    def __init__(self, num_classes: int, mla_channels: int, in_index: int):
        super().__init__()
        self.in_index = in_index
        self.aux = nn.Conv2d(mla_channels, num_classes, 1, bias=False)
        self.conv_seg = checkpoint_only_conv(CONV_SEG_CHANNELS, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.aux(x)


def scaled_layers(layers: int | Sequence[int], depth: int) -> Any:
    """ViT-L's layer choice (of 24) carried to an encoder of `depth` layers, in proportion (our choice)."""
    if isinstance(layers, int):
        return max(round((layers + 1) * depth / 24) - 1, 0)
    return tuple(scaled_layers(layer, depth) for layer in layers)


class SETR(SegmentationModel):
    """SETR: an encoder (`backbone`), the `decoder` "naive", "pup" or "mla", and the auxiliary heads.

    `backbone` is a registered backbone name (built with `img_size`, `in_chans` and `backbone_args`,
    without a classifier) or a model; any backbone with `features_only` works: Naive and PUP read one
    level (`in_index`), MLA four levels of one stride (`mla_indices`). For a ViT the layers default to
    the released ViT-L configs' (scaled to its depth), its final LayerNorm is removed (SETR's encoder
    has none) and MLA drops the class token before the blocks as the official encoder does. For other
    backbones Naive and PUP read the last level, MLA `default_out_indices`, and there are no auxiliary
    heads unless `aux_indices` names levels. `channels` is the width of the Naive/PUP convolutions
    (256 in the paper), `mla_channels` / `mla_head_channels` MLA's (256 / 128).
    """

    def __init__(
        self,
        decoder: str = "pup",
        num_classes: int = 19,
        img_size: int | tuple[int, int] = 768,
        backbone: str | nn.Module = "vit_large_patch16_384",
        backbone_args: dict[str, Any] | None = None,
        in_chans: int = 3,
        in_index: int | None = None,
        aux_indices: Sequence[int] | None = None,
        mla_indices: Sequence[int] | None = None,
        auxiliary: bool = True,
        channels: int = 256,
        mla_channels: int = 256,
        mla_head_channels: int = 128,
    ):
        super().__init__(num_classes, in_chans)
        if decoder not in DECODERS:
            raise ValueError(f"SETR decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder = decoder
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, img_size=img_size, in_chans=in_chans, **(backbone_args or {}))
        self.backbone = build_backbone(backbone)
        is_vit = isinstance(self.backbone, VisionTransformer)
        if is_vit:
            self.backbone.norm = nn.Identity()  # SETR's encoder ends with the last block
        info = self.backbone.feature_info
        depth = len(info)
        self.drop_prefix_before_blocks = decoder == "mla" and is_vit  # the official VIT_MLA encoder
        if decoder == "mla":
            default = scaled_layers(VIT_L_LAYERS["mla"], depth) if is_vit else self.backbone.default_out_indices
            self.mla_indices = self._levels(mla_indices if mla_indices is not None else default)
            if len({info[i]["reduction"] for i in self.mla_indices}) != 1:
                strides = [info[i]["reduction"] for i in self.mla_indices]
                raise ValueError(f"SETR MLA sums maps of one stride: levels {self.mla_indices} have strides {strides}")
            self.neck = MLANeck([info[i]["num_chs"] for i in self.mla_indices], mla_channels)
            self.decode_head = SETRMLAHead(num_classes, mla_channels, mla_head_channels)
            aux = [SETRMLAAuxHead(num_classes, mla_channels, i) for i in range(4)] if auxiliary else []
        else:
            self.in_index = self._levels([in_index if in_index is not None else depth - 1])[0]
            default_aux = scaled_layers(VIT_L_LAYERS[f"{decoder}_aux"], depth) if is_vit else ()
            aux_levels = self._levels(aux_indices if aux_indices is not None else default_aux) if auxiliary else ()
            head = self._up_head_args(decoder, channels)
            self.decode_head = SETRUpHead(info[self.in_index]["num_chs"], num_classes, in_index=self.in_index, **head)
            aux_args = self._up_head_args("pup_aux" if decoder == "pup" else "naive", channels)
            aux = [SETRUpHead(info[i]["num_chs"], num_classes, in_index=i, **aux_args) for i in aux_levels]
        self.auxiliary_head = nn.ModuleList(aux) if aux else None

    @staticmethod
    def _up_head_args(decoder: str, channels: int = 256) -> dict[str, Any]:
        if decoder == "pup":  # every step upsamples 2x; the fourth conv is followed by the classifier
            return dict(num_convs=4, kernel_size=3, scales=(2, 2, 2, 1, 2), channels=channels)
        if decoder == "pup_aux":  # released PUP configs: 3x3 conv-BN-ReLU, 4x up, the classifier
            return dict(num_convs=1, kernel_size=3, scales=(4, 1), channels=channels)
        return dict(num_convs=1, kernel_size=1, scales=(1, 1), channels=channels)  # released Naive: 1x1 conv_0

    def _levels(self, indices: Sequence[int]) -> tuple[int, ...]:
        levels = len(self.backbone.feature_info)
        if any(not -levels <= i < levels for i in indices):
            raise ValueError(f"SETR: feature levels {tuple(indices)} out of range; the backbone has {levels}")
        return tuple(i % levels for i in indices)

    def unused_parameter_names(self) -> list[str]:
        """Parameters no forward pass uses, kept so the released checkpoints load strictly: `conv_seg`, and
        for MLA over a ViT the class (and distillation) token, which the official encoder drops."""
        tokens = ("backbone.cls_token", "backbone.dist_token") if self.drop_prefix_before_blocks else ()
        return [name for name, _ in self.named_parameters() if ".conv_seg." in name or name in tokens]

    def _features(self, x: Tensor, levels: Sequence[int]) -> dict[int, Tensor]:
        """NCHW maps of the encoder `levels` (for a ViT: the patch tokens after those blocks, not normalised)."""
        if self.drop_prefix_before_blocks:
            vit = self.backbone
            tokens, (h, w) = vit.embed(x)
            tokens = tokens[:, vit.num_prefix_tokens :]  # official VIT_MLA: the class token never enters a block
            maps = {}
            for depth, block in enumerate(vit.blocks[: max(levels) + 1]):
                tokens = vit.run_blocks([block], tokens)
                if depth in levels:
                    maps[depth] = tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            return maps
        return dict(zip(levels, self.backbone.forward_intermediates(x, levels), strict=True))

    def forward_logits(self, x: Tensor) -> SegmentationOutput:
        self.check_input(x)
        heads = list(self.auxiliary_head) if self.training and self.auxiliary_head is not None else []
        if self.decoder == "mla":
            features = self._features(x, sorted(set(self.mla_indices)))
            maps = self.neck([features[i] for i in self.mla_indices])
            logits = self.decode_head(maps)
        else:
            maps = self._features(x, sorted({self.in_index, *(head.in_index for head in heads)}))
            logits = self.decode_head(maps[self.in_index])
        aux = [head(maps[head.in_index]) for head in heads]
        return SegmentationOutput(logits, aux, [AUX_WEIGHT] * len(aux))


_PAPER = "SETR: Zheng et al. 2021; official release fudan-zvg/SETR"
_DATASETS = {768: 19, 512: 150}  # 768: Cityscapes crops, 19 classes; 512: ADE20K crops, 150 classes
_VITS = {"large": "vit_large_patch16_384", "small": "vit_small_patch16_384", "tiny": "vit_tiny_patch16_384"}
_TINY = dict(img_size=64, backbone_args=dict(embed_dim=16, depth=4, num_heads=2), channels=8, mla_channels=8,
             mla_head_channels=4)  # fmt: skip

for _vit, _sizes in [("large", (768, 512)), ("small", (512,)), ("tiny", (512,))]:
    for _size in _sizes:
        for _decoder in DECODERS:
            register_model(
                f"setr_{_decoder}_vit_{_vit}_{_size}",
                SETR,
                dict(decoder=_decoder, num_classes=_DATASETS[_size], img_size=_size, backbone=_VITS[_vit]),
                _PAPER,
                tiny=_TINY,
                task="semantic-segmentation",
                num_classes=_DATASETS[_size],
                preprocess=Preprocess((3, _size, _size), IMAGENET.mean, IMAGENET.std, 1.0, "bilinear"),
            )
