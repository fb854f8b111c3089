"""Segmenter (Strudel et al., ICCV 2021, "Segmenter: Transformer for Semantic Segmentation").

A ViT encodes the image (padded to a multiple of the patch size); its final, normalised patch
tokens are decoded (section 3.2):
- the *linear* decoder classifies each patch token (a point-wise linear layer), giving a
  (classes, H/16, W/16) map;
- the *mask transformer* projects the patch tokens (`proj_dec`), appends one learned embedding per
  class (`cls_emb`, after the patch tokens), runs transformer blocks over both jointly, normalises
  (`decoder_norm`), projects patches and classes (`proj_patch`, `proj_classes`, used as x @ P as
  the release stores them), L2-normalises both and takes their scalar products as the class
  masks (eq. 1), followed by a LayerNorm over the classes (`mask_norm`).
The masks are upsampled bilinearly to the padded image and the padding is cut off.

As in the official release (rstrudel/segmenter): every LayerNorm of encoder and decoder has eps
1e-5, the encoder keeps timm's 1000-class `head` (unused, present in the checkpoints), the mask
transformer has 2 blocks of width d_encoder with d_encoder // 64 heads, MLP ratio 4, dropout 0.1,
and a position table learned for the crop size is resized bilinearly (no antialiasing) to other
grids. The checkpoints' `encoder.*` / `decoder.*` are `backbone.*` / `decode_head.*` here
(`layouts/segmenter.py`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers.blocks import run_blocks
from vitlab.layers.drop import drop_path_rates
from vitlab.layers.position import exporting
from vitlab.models.vit import VisionTransformer, vit_block
from vitlab.registry import INCEPTION, Preprocess, register_model
from vitlab.segmentation.base import SegmentationModel, SegmentationOutput, build_backbone
from vitlab.weights import Weights

DECODERS = ("linear", "mask")
NORM_EPS = 1e-5  # nn.LayerNorm's default, which the release uses everywhere


class SegmenterViT(VisionTransformer):
    """The release's encoder: vitlab's ViT (timm's layout) with LayerNorm eps 1e-5 and its own
    position-table resize, bilinear without antialiasing (timm's, which vitlab follows, is bicubic)."""

    def __init__(self, **kwargs: Any):
        super().__init__(norm_eps=NORM_EPS, **kwargs)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        self.check_input(x)
        x, grid = self.patch_embed(x)
        pos_embed = self.pos_embed
        if exporting() or grid != self.grid_size:  # exported: always resampled (the identity at the own grid)
            prefix, table = pos_embed[:, : self.num_prefix_tokens], pos_embed[:, self.num_prefix_tokens :]
            table = table.reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
            table = F.interpolate(table, size=grid, mode="bilinear", align_corners=False)
            pos_embed = torch.cat([prefix, table.flatten(2).transpose(1, 2)], dim=1)
        prefix_tokens = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix_tokens.append(self.dist_token.expand(x.shape[0], -1, -1))
        return self.pos_drop(torch.cat([*prefix_tokens, x], dim=1) + pos_embed), grid


class DecoderLinear(nn.Module):
    """A linear classifier of every patch token (`head`)."""

    def __init__(self, num_classes: int, d_encoder: int):
        super().__init__()
        self.head = nn.Linear(d_encoder, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        return self.head(x).transpose(1, 2).reshape(x.shape[0], -1, *grid)


class MaskTransformer(nn.Module):
    """Class embeddings decoded jointly with the patch tokens; masks are their scalar products (eq. 1)."""

    def __init__(
        self,
        num_classes: int,
        d_encoder: int,
        n_layers: int = 2,
        n_heads: int | None = None,
        d_model: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        d_model = d_model or d_encoder
        n_heads = n_heads or d_model // 64
        self.num_classes = num_classes
        self.grad_checkpointing = False
        rates = drop_path_rates(drop_path_rate, n_layers)
        norm = dict(norm_layer=lambda dim: nn.LayerNorm(dim, eps=NORM_EPS))
        self.blocks = nn.ModuleList(
            vit_block(d_model, n_heads, mlp_ratio, proj_drop=dropout, attn_drop=dropout, drop_path=rate, **norm)
            for rate in rates
        )
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, d_model))
        self.proj_dec = nn.Linear(d_encoder, d_model)
        scale = d_model**-0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.decoder_norm = nn.LayerNorm(d_model, eps=NORM_EPS)
        self.mask_norm = nn.LayerNorm(num_classes, eps=NORM_EPS)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = self.proj_dec(x)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        x = self.decoder_norm(run_blocks(self.blocks, x, self.grad_checkpointing))
        patches, classes = x[:, : -self.num_classes] @ self.proj_patch, x[:, -self.num_classes :] @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        classes = classes / classes.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))
        return masks.transpose(1, 2).reshape(x.shape[0], -1, *grid)


class Segmenter(SegmentationModel):
    """Segmenter: a token backbone and the `decoder` "linear" or "mask" (the mask transformer).

    Without `backbone` the encoder is the release's ViT (`embed_dim`, `depth`, `num_heads`,
    `patch_size`, made for `img_size`, with the unused 1000-class `head` of its checkpoints). A
    `backbone` (a registered name or a model) must return patch tokens from `forward_features`
    (`feature_format` "NLC": the ViT family, DeiT); the decoders read the tokens of a patch grid,
    which pyramid backbones do not have (use SETR or SegFormer over those).
    """

    def __init__(
        self,
        decoder: str = "mask",
        num_classes: int = 150,
        img_size: int | tuple[int, int] = 512,
        backbone: str | nn.Module | None = None,
        backbone_args: dict[str, Any] | None = None,
        in_chans: int = 3,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        decoder_layers: int = 2,
        decoder_heads: int | None = None,
        decoder_dropout: float = 0.1,
    ):
        super().__init__(num_classes, in_chans)
        if decoder not in DECODERS:
            raise ValueError(f"Segmenter decoder must be one of {DECODERS}, got {decoder!r}")
        if backbone is None:
            args = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=1000)
            args.update(embed_dim=embed_dim, depth=depth, num_heads=num_heads, drop_rate=drop_rate)
            args.update(attn_drop_rate=drop_rate, drop_path_rate=drop_path_rate)
            backbone = SegmenterViT(**{**args, **(backbone_args or {})})
        elif isinstance(backbone, str):
            backbone = build_backbone(backbone, img_size=img_size, in_chans=in_chans, **(backbone_args or {}))
        self.backbone = build_backbone(backbone)
        if getattr(self.backbone, "feature_format", None) != "NLC" or self.backbone.patch_size is None:
            found = getattr(self.backbone, "feature_format", "no feature_format")
            raise TypeError(
                f"Segmenter decodes patch tokens: its backbone must return tokens of a patch grid "
                f"(feature_format 'NLC', e.g. vit_*, deit_*), {type(self.backbone).__name__} returns {found}; "
                "use SETR or SegFormer heads over pyramid backbones"
            )
        width = self.backbone.embed_dim
        if decoder == "linear":
            self.decode_head = DecoderLinear(num_classes, width)
        else:
            self.decode_head = MaskTransformer(
                num_classes, width, decoder_layers, decoder_heads, dropout=decoder_dropout
            )

    def unused_parameter_names(self) -> list[str]:
        """The encoder's ImageNet classifier: in the released checkpoints, never used for segmentation."""
        head = self.backbone.classifier_keys
        return [name for name, _ in self.named_parameters() if name.removeprefix("backbone.").split(".")[0] in head]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        if isinstance(self.decode_head, MaskTransformer):
            self.decode_head.grad_checkpointing = enable

    def _grid(self, x: Tensor) -> tuple[int, int]:
        # The ceiling of s / p written as the patch embedding pads (`pad_to_multiple`: s + (-s mod p), then p
        # divides it), so that torch.export sees the same symbolic grid as the encoder's tokens and adds no guard
        # relating two forms of it; it also traces to ONNX (whose integer Div truncates: -(-s // p) would floor)
        return tuple((s + -s % p) // p for s, p in zip(x.shape[-2:], self.backbone.patch_size, strict=True))

    def forward_logits(self, x: Tensor) -> SegmentationOutput:
        """Masks at the patch grid of the image padded to a multiple of the patch size."""
        self.check_input(x)
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens :]
        return SegmentationOutput(self.decode_head(tokens, self._grid(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Masks upsampled to the padded image, then the padding cut off (the release's unpadding)."""
        logits = self.forward_logits(x).logits
        patch = self.backbone.patch_size
        if torch.compiler.is_exporting():
            # The same values without the crop (checked bit for bit in tests/export): torch.export would guard on
            # the crop's strides, i.e. on whether the height is a multiple of the patch (the traced size's case).
            # The scales give the coordinate map of the padded size; the ONNX tracer keeps the crop below (its
            # Resize would take the scale from the output size).
            size = [x.shape[-2], x.shape[-1]]
            return torch.ops.aten.upsample_bilinear2d.default(logits, size, False, float(patch[0]), float(patch[1]))
        padded = tuple(g * p for g, p in zip(logits.shape[-2:], patch, strict=True))
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        return logits[..., : x.shape[-2], : x.shape[-1]]


_PAPER = "Segmenter: Strudel et al. 2021; official release rstrudel/segmenter"
_SIZES = {  # name: (embed_dim, depth, num_heads, crop size of the ADE20K release)
    "tiny": (192, 12, 3, 512),
    "small": (384, 12, 6, 512),
    "base": (768, 12, 12, 512),
    "large": (1024, 24, 16, 640),
}
# The README's ADE20K release files of the mask-transformer models (the linear-decoder ones are not released).
_RELEASE = "https://www.rocq.inria.fr/cluster-willow/rstrudel/segmenter/checkpoints/ade20k/{}/checkpoint.pth"


def _ade_release(size: str) -> list[Weights]:
    folder = "seg_large_mask_640" if size == "large" else f"seg_{size}_mask"
    return [Weights("ade", url=_RELEASE.format(folder), layout="official", num_classes=150, classes=None)]


for _size, (_dim, _depth, _heads, _img) in _SIZES.items():
    for _decoder in DECODERS:
        register_model(
            f"segmenter_{_size}_{_decoder}",
            Segmenter,
            dict(decoder=_decoder, num_classes=150, img_size=_img, embed_dim=_dim, depth=_depth, num_heads=_heads),
            _PAPER,
            tiny=dict(img_size=64, embed_dim=32, depth=2, num_heads=2, decoder_heads=2),
            task="semantic-segmentation",
            num_classes=150,
            preprocess=Preprocess((3, _img, _img), INCEPTION.mean, INCEPTION.std, 1.0, "bilinear"),
            weights=_ade_release(_size) if _decoder == "mask" else [],
        )
