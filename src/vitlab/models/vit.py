"""ViT (Dosovitskiy et al. 2021), DeiT (Touvron et al. 2021) and the convolutional-stem ViT (Xiao et al. 2021).

An image is cut into 16x16 patches, each patch becomes a token, a learned class token is
prepended, a learned position table is added, and a stack of pre-norm transformer blocks mixes
the tokens; the class token's final state is classified (eq. 1-4 of the ViT paper). DeiT adds a
second, *distillation* token whose output is trained to match a teacher (DeiT, section 4); at
inference the two heads' logits are averaged.

`VisionTransformer` is composable: the embedding layer (`embed_layer`, patchify by default), the
block (`block_fn`, the pre-norm block with multi-head attention by default) and the pooling of the
head (`global_pool`) are arguments, so models that change one of them (a convolutional stem, soft
split, image-to-tokens, gated positional attention) are a registration or a short builder.

The parameter layout is timm's, which is also the layout of the official DeiT release.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from vitlab.layers import Mlp, MultiHeadAttention, PatchEmbed, drop_path_rates
from vitlab.layers.blocks import PreNormBlock
from vitlab.layers.embed import ConvStem
from vitlab.layers.heads import POOLS, distilled_logits, pool_features
from vitlab.layers.position import resize_pos_embed
from vitlab.models.base import Backbone
from vitlab.registry import INCEPTION, Preprocess, register_model
from vitlab.weights import timm_weights


def vit_block(
    dim: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    proj_drop: float = 0.0,
    attn_drop: float = 0.0,
    drop_path: float = 0.0,
    init_values: float | None = None,
    norm_layer: type[nn.Module] = nn.LayerNorm,
    similarity: str = "dot",
    **_: object,
) -> PreNormBlock:
    """ViT's block: x + MSA(LN(x)), then x + MLP(LN(x)) (ViT eq. 2-3)."""
    attn = MultiHeadAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, similarity)
    return PreNormBlock(dim, attn, Mlp(dim, int(dim * mlp_ratio), drop=proj_drop), drop_path, init_values, norm_layer)


class VisionTransformer(Backbone):
    """ViT, and DeiT with `distilled=True`.

    Any input size works: sides that are not multiples of the patch size are zero-padded, and the
    position table (learned for `img_size`) is resized on the fly to the input's patch grid, the
    class and distillation slots untouched.
    `global_pool` is "token" (classify the class token), "avg" (mean of the patch tokens,
    normalised by `fc_norm` as in timm) or "flatten" (classify the concatenated patch tokens, like
    the dense head of a small CNN: the classifier sees where each feature is, at the price of a fixed
    input size).
    `embed_layer(in_chans=, embed_dim=)` replaces the patchify stem; it returns (tokens, grid) and
    states its total stride as `patch_size`. `block_fn(index=, dim=, num_heads=, ..., drop_path=)`
    builds block `index`.
    """

    feature_format = "NLC"
    has_patch_tokens = True

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        distilled: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        similarity: str = "dot",
        embed_layer: Callable[..., nn.Module] | None = None,
        block_fn: Callable[..., nn.Module] = vit_block,
    ):
        super().__init__(in_chans, num_classes, img_size)
        if global_pool not in POOLS:
            raise ValueError(f"global_pool must be one of {POOLS}, got {global_pool!r}")
        if global_pool == "flatten" and distilled:
            raise ValueError("global_pool 'flatten' has no distillation head: use 'token' with distilled=True")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.distilled = distilled
        self.num_prefix_tokens = 2 if distilled else 1

        if embed_layer is None:
            self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        else:
            self.patch_embed = embed_layer(in_chans=in_chans, embed_dim=embed_dim)
        self.patch_size = self.patch_embed.patch_size
        self.input_conv = f"patch_embed.{self.patch_embed.input_conv}.weight"
        # Inputs are zero-padded to a multiple of the patch, so `img_size` makes ceil(side / patch) patches.
        self.grid_size = tuple(-(-s // p) for s, p in zip(self.img_size, self.patch_size, strict=True))
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        rates = drop_path_rates(drop_path_rate, depth)
        block_args = dict(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        block_args.update(proj_drop=drop_rate, attn_drop=attn_drop_rate, init_values=init_values)
        block_args.update(norm_layer=norm_layer, similarity=similarity)
        self.blocks = nn.Sequential(*[block_fn(index=i, drop_path=rates[i], **block_args) for i in range(depth)])
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.num_features = embed_dim * num_patches if global_pool == "flatten" else embed_dim
        self.add_classifier("head", self.num_features)
        if distilled:
            self.add_classifier("head_dist", embed_dim)

        reduction = self.patch_size[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)]
        self.default_out_indices = tuple(depth * q // 4 - 1 for q in (1, 2, 3, 4))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        self._init_linear_layers()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Resize a checkpoint's position table to this model's grid (e.g. 224 -> 384)."""
        table = state_dict.get("pos_embed")
        if table is not None and table.shape != self.pos_embed.shape and table.shape[-1] == self.embed_dim:
            try:
                resized = resize_pos_embed(table, self.grid_size, None, self.num_prefix_tokens)
            except ValueError:
                return state_dict  # not a table of this model: the strict key check reports it
            state_dict = {**state_dict, "pos_embed": resized}
        return state_dict

    # The forward pass, top-down.
    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch tokens with the class (and distillation) token prepended and positions added; the grid."""
        self.check_input(x)
        x, grid = self.patch_embed(x)
        pos_embed = resize_pos_embed(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1) + pos_embed
        return self.pos_drop(x), grid

    def forward_features(self, x: Tensor) -> Tensor:
        x, _ = self.embed(x)
        return self.norm(self.run_blocks(self.blocks, x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits; a distilled model in training mode returns (class-head, distillation-head) logits."""
        if self.distilled:
            x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
            if pre_logits:
                return (x + x_dist) / 2
            return distilled_logits(self.head(x), self.head_dist(x_dist), self.training)
        x = pool_features(x, self.global_pool, self.feature_format, self.num_prefix_tokens)
        if self.global_pool == "flatten" and x.shape[1] != self.num_features:
            h, w = self.grid_size
            raise ValueError(
                f"global_pool 'flatten' classifies the {h}x{w} = {h * w} patches of the image size the model "
                f"was built for, got {x.shape[1] // self.embed_dim} patches: resize the input"
            )
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward_patch_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tokens, _ = self.embed(x)
        first = tokens[:, self.num_prefix_tokens :]
        tokens = self.norm(self.run_blocks(self.blocks, tokens))
        return self.forward_head(tokens), first, tokens[:, self.num_prefix_tokens :]

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        """The patch tokens after every block, as (B, D, H/p, W/p) maps."""
        x, (h, w) = self.embed(x)
        for block in self.blocks:
            x = self.run_blocks([block], x)
            yield x[:, self.num_prefix_tokens :].transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def blocks_in_depth_order(self) -> list[nn.Module]:
        return list(self.blocks)


def conv_stem_vit(
    stem_channels: Sequence[int] = (32, 64), stem_strides: Sequence[int] | None = None, **kwargs
) -> VisionTransformer:
    """A ViT whose patchify stem is a stack of 3x3 conv-BN-ReLU (Xiao et al. 2021, "Early Convolutions
    Help Transformers See Better", section 3): faster convergence, and on small images what lets a
    small transformer learn in a few epochs. `stem_strides` default to 2 for every convolution.
    """
    strides = list(stem_strides) if stem_strides is not None else [2] * len(stem_channels)
    embed = partial(ConvStem, stem_channels, strides=strides)
    return VisionTransformer(patch_size=math.prod(strides), embed_layer=embed, **kwargs)


_VIT = "ViT: Dosovitskiy et al. 2021"
_DEIT = "DeiT: Touvron et al. 2021"
_TINY = dict(embed_dim=32, depth=2, num_heads=2)
_WIDTHS = {  # name: (embed_dim, depth, num_heads)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def _register_vit(size: str, patch: int, img: int, tag: str | None) -> None:
    dim, depth, heads = _WIDTHS[size]
    name = f"vit_{size}_patch{patch}_{img}"
    register_model(
        name,
        VisionTransformer,
        dict(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads),
        _VIT,
        tiny=_TINY,
        preprocess=Preprocess((3, img, img), INCEPTION.mean, INCEPTION.std, crop_pct=0.9 if img == 224 else 1.0),
        weights=timm_weights(name, default=tag),
    )


for _size, _patch, _img, _tag in [
    ("tiny", 16, 224, "augreg_in21k_ft_in1k"),
    ("tiny", 32, 224, None),
    ("small", 16, 224, "augreg_in21k_ft_in1k"),
    ("small", 32, 224, "augreg_in21k_ft_in1k"),
    ("base", 16, 224, "augreg2_in21k_ft_in1k"),
    ("base", 32, 224, "augreg_in21k_ft_in1k"),
    ("large", 16, 224, "augreg_in21k_ft_in1k"),
    ("large", 32, 224, None),
    ("huge", 14, 224, None),
    ("tiny", 16, 384, "augreg_in21k_ft_in1k"),
    ("small", 16, 384, "augreg_in21k_ft_in1k"),
    ("base", 16, 384, "augreg_in21k_ft_in1k"),
    ("large", 16, 384, "augreg_in21k_ft_in1k"),
]:
    _register_vit(_size, _patch, _img, _tag)

_DEIT_TOP1 = {  # DeiT paper, Table 5 / README (ImageNet-1k top-1)
    ("tiny", False): 72.2,
    ("small", False): 79.9,
    ("base", False): 81.8,
    ("tiny", True): 74.5,
    ("small", True): 81.2,
    ("base", True): 83.4,
}
for (_size, _distilled), _top1 in _DEIT_TOP1.items():
    _name = f"deit_{_size}{'_distilled' if _distilled else ''}_patch16_224"
    _dim, _depth, _heads = _WIDTHS[_size]
    register_model(
        _name,
        VisionTransformer,
        dict(embed_dim=_dim, depth=_depth, num_heads=_heads, distilled=_distilled),
        _DEIT,
        tiny=_TINY,
        weights=timm_weights(_name),
        paper=dict(top1=_top1),
    )
for _name, _distilled in [("deit_base_patch16_384", False), ("deit_base_distilled_patch16_384", True)]:
    register_model(
        _name,
        VisionTransformer,
        dict(img_size=384, embed_dim=768, depth=12, num_heads=12, distilled=_distilled),
        _DEIT,
        tiny=_TINY,
        preprocess=Preprocess((3, 384, 384), crop_pct=1.0),
        weights=timm_weights(_name),
    )

# vitlab's own small-image configuration of the convolutional-stem ViT (the paper's are for ImageNet and
# have no public reference implementation); its state dict is vitlab's.
register_model(
    "vitc_tiny_s4_32",
    conv_stem_vit,
    dict(img_size=32, stem_channels=(32, 64), embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, global_pool="avg"),
    "ViT_C: Xiao et al. 2021 (convolutional stem); small-image configuration of vitlab",
    tiny=dict(stem_channels=(8, 16), embed_dim=32, depth=2),
    preprocess=Preprocess((3, 32, 32), INCEPTION.mean, INCEPTION.std, crop_pct=1.0),
)

# vitlab's own 28x28 configurations for the data-efficiency study (benchmarks/data_efficiency.py): about
# 0.45M parameters with one input channel and 10 classes, like the other families' `*_mini_28`.
for _name, _distilled in [("vit_mini_28", False), ("deit_mini_28", True)]:
    register_model(
        _name,
        VisionTransformer,
        dict(
            img_size=28,
            in_chans=1,
            num_classes=10,
            patch_size=4,
            embed_dim=96,
            depth=4,
            num_heads=4,
            distilled=_distilled,
        ),
        f"{_DEIT if _distilled else _VIT}; 28x28 configuration of vitlab (patch 4, 49 tokens)",
        tiny=dict(embed_dim=16, depth=2, num_heads=2),
        preprocess=Preprocess((1, 28, 28), (0.5,), (0.5,), crop_pct=1.0),
    )
