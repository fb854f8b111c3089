"""ViT (Dosovitskiy et al. 2021) and DeiT (Touvron et al. 2021).

An image is cut into 16x16 patches, each patch becomes a token, a learned class token is
prepended, a learned position table is added, and a stack of pre-norm transformer blocks mixes
the tokens; the class token's final state is classified (eq. 1-4 of the ViT paper). DeiT adds a
second, *distillation* token whose output is trained to match a teacher (DeiT, section 4); at
inference the two heads' logits are averaged.

The parameter layout is timm's, which is also the layout of the official DeiT release.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vitlab.checkpoint import StateDict, fuse_qkv, register_converter, rename_keys
from vitlab.layers import DropPath, LayerScale, Mlp, MultiHeadAttention, PatchEmbed, drop_path_rates
from vitlab.layers.embed import to_2tuple
from vitlab.layers.position import resize_pos_embed
from vitlab.registry import INCEPTION_MEAN, INCEPTION_STD, register_model


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x)) (ViT eq. 2-3)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        init_values: float | None = None,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        similarity: str = "dot",
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias, attn_drop, drop, similarity)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


GLOBAL_POOLS = ("token", "avg", "flatten")


class VisionTransformer(nn.Module):
    """ViT, and DeiT with `distilled=True`.

    Any input size works: sides that are not multiples of the patch size are zero-padded, and the
    position table (learned for `img_size`) is resized on the fly to the input's patch grid, the
    class and distillation slots untouched.
    `global_pool` is "token" (classify the class token), "avg" (mean of the patch tokens,
    normalised by `fc_norm` as in timm) or "flatten" (classify the concatenated patch tokens, like
    the dense head of a small CNN: the classifier sees where each feature is, at the price of a fixed
    input size).
    """

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
    ):
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if global_pool == "flatten" and distilled:
            raise ValueError("global_pool 'flatten' has no distillation head: use 'token' with distilled=True")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.distilled = distilled
        self.num_prefix_tokens = 2 if distilled else 1
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        # Inputs are zero-padded to a multiple of the patch, so `img_size` makes ceil(side / patch) patches.
        sides, patch = to_2tuple(img_size), self.patch_embed.patch_size
        self.grid_size = tuple(-(-s // p) for s, p in zip(sides, patch, strict=True))
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    rates[i],
                    init_values,
                    norm_layer,
                    similarity,
                )
                for i in range(depth)
            ]
        )
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        if global_pool == "flatten":
            self.num_features = embed_dim * num_patches
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

        self.feature_info = [
            dict(num_chs=embed_dim, reduction=self.patch_embed.patch_size[0], module=f"blocks.{i}")
            for i in range(depth)
        ]
        self.default_out_indices = tuple(depth * q // 4 - 1 for q in (1, 2, 3, 4))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # Contracts used by training and checkpoint loading.
    classifier_keys = ("head", "head_dist")

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Resize a checkpoint's position table to this model's grid (e.g. 224 -> 384)."""
        table = state_dict.get("pos_embed")
        if table is not None and table.shape != self.pos_embed.shape:
            try:
                resized = resize_pos_embed(table, self.grid_size, None, self.num_prefix_tokens)
            except ValueError:
                return state_dict  # not a table of this model: the strict key check reports it
            state_dict = {**state_dict, "pos_embed": resized}
        return state_dict

    # The forward pass, top-down.
    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x, grid = self.patch_embed(x)
        pos_embed = resize_pos_embed(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1) + pos_embed
        return self.pos_drop(x), grid

    def run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: Tensor) -> Tensor:
        x, _ = self.embed(x)
        for block in self.blocks:
            x = self.run_block(block, x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if self.distilled:
            x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
            if pre_logits:
                return (x + x_dist) / 2
            x, x_dist = self.head(x), self.head_dist(x_dist)
            return (x, x_dist) if self.training else (x + x_dist) / 2
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        elif self.global_pool == "flatten":
            x = x[:, self.num_prefix_tokens :].flatten(1)
            if x.shape[1] != self.num_features:
                h, w = self.grid_size
                raise ValueError(
                    f"global_pool 'flatten' classifies the {h}x{w} = {h * w} patches of the image size the model "
                    f"was built for, got {x.shape[1] // self.embed_dim} patches: resize the input"
                )
        else:
            x = x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Logits; a distilled model in training mode returns (class-head, distillation-head) logits."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """The patch tokens after the blocks in `indices`, as (B, D, H/p, W/p) maps."""
        x, (h, w) = self.embed(x)
        maps = {}
        for i, block in enumerate(self.blocks[: max(indices) + 1]):
            x = self.run_block(block, x)
            if i in indices:
                tokens = x[:, self.num_prefix_tokens :]
                maps[i] = tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return [maps[i] for i in indices]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if self.distilled:
            self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()
        for head in (self.head, getattr(self, "head_dist", None)):
            if isinstance(head, nn.Linear):
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)


# Other checkpoint layouts.
def _is_hf(state_dict: StateDict) -> bool:
    return any(".embeddings.patch_embeddings." in k or k.startswith("embeddings.") for k in state_dict)


@register_converter(VisionTransformer, "hf", _is_hf)
def convert_hf(state_dict: StateDict, model: nn.Module) -> StateDict:
    """HF transformers' ViT/DeiT: the files `save_pretrained` writes, and the in-memory names of 5.x."""
    layer = r"^(?:vit\.|deit\.)?(?:encoder\.layer|layers)\.(\d+)\."
    rules = [
        (r"^(?:vit\.|deit\.)?embeddings\.cls_token$", "cls_token"),
        (r"^(?:vit\.|deit\.)?embeddings\.distillation_token$", "dist_token"),
        (r"^(?:vit\.|deit\.)?embeddings\.position_embeddings$", "pos_embed"),
        (r"^(?:vit\.|deit\.)?embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (layer + r"layernorm_before\.", r"blocks.\1.norm1."),
        (layer + r"layernorm_after\.", r"blocks.\1.norm2."),
        (layer + r"attention\.(?:attention\.query|q_proj)\.", r"blocks.\1.attn.q."),
        (layer + r"attention\.(?:attention\.key|k_proj)\.", r"blocks.\1.attn.k."),
        (layer + r"attention\.(?:attention\.value|v_proj)\.", r"blocks.\1.attn.v."),
        (layer + r"attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
        (layer + r"(?:intermediate\.dense|mlp\.fc1)\.", r"blocks.\1.mlp.fc1."),
        (layer + r"(?:output\.dense|mlp\.fc2)\.", r"blocks.\1.mlp.fc2."),
        (r"^(?:vit\.|deit\.)?layernorm\.", "norm."),
        (r"^(?:classifier|cls_classifier)\.", "head."),
        (r"^distillation_classifier\.", "head_dist."),
    ]
    return fuse_qkv(rename_keys(state_dict, rules))


def _is_jax(state_dict: StateDict) -> bool:
    return any("Transformer/" in k for k in state_dict)


@register_converter(VisionTransformer, "jax", _is_jax)
def convert_jax(state_dict: StateDict, model: nn.Module) -> StateDict:
    """The `.npz` files of google-research/vision_transformer (Flax names, HWIO / (in, heads, dim) kernels)."""
    w = {k.removeprefix("opt/target/"): v for k, v in state_dict.items()}
    # Two generations of the release number their sub-modules differently.
    attn, mlp, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if any("MultiHeadDotProductAttention_0" in k for k in w)
        else ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    )
    out = {
        "patch_embed.proj.weight": w.pop("embedding/kernel").permute(3, 2, 0, 1),
        "patch_embed.proj.bias": w.pop("embedding/bias"),
        "cls_token": w.pop("cls"),
        "pos_embed": w.pop("Transformer/posembed_input/pos_embedding"),
        "norm.weight": w.pop("Transformer/encoder_norm/scale"),
        "norm.bias": w.pop("Transformer/encoder_norm/bias"),
    }
    if "head/kernel" in w:
        out["head.weight"] = w.pop("head/kernel").T
        out["head.bias"] = w.pop("head/bias")
    depth = len({k.split("/")[1] for k in w if k.startswith("Transformer/encoderblock_")})
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for name, target in (("LayerNorm_0", "norm1"), (ln2, "norm2")):
            out[f"{dst}{target}.weight"] = w.pop(f"{src}{name}/scale")
            out[f"{dst}{target}.bias"] = w.pop(f"{src}{name}/bias")
        qkv = [w.pop(f"{src}{attn}/{n}/kernel").flatten(1).T for n in ("query", "key", "value")]
        out[f"{dst}attn.qkv.weight"] = torch.cat(qkv)
        out[f"{dst}attn.qkv.bias"] = torch.cat(
            [w.pop(f"{src}{attn}/{n}/bias").flatten() for n in ("query", "key", "value")]
        )
        out[f"{dst}attn.proj.weight"] = w.pop(f"{src}{attn}/out/kernel").flatten(0, 1).T
        out[f"{dst}attn.proj.bias"] = w.pop(f"{src}{attn}/out/bias")
        for j, target in ((0, "fc1"), (1, "fc2")):
            out[f"{dst}mlp.{target}.weight"] = w.pop(f"{src}{mlp}/Dense_{j}/kernel").T
            out[f"{dst}mlp.{target}.bias"] = w.pop(f"{src}{mlp}/Dense_{j}/bias")
    out.update(w)  # anything left (e.g. pre_logits) is reported by the strict load
    return {k: v.contiguous() for k, v in out.items()}


_VIT = "ViT: Dosovitskiy et al. 2021"
_DEIT = "DeiT: Touvron et al. 2021"
_HUB = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_WIDTHS = {  # name: (embed_dim, depth, num_heads)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def _register_vit(size: str, patch: int, img: int, tag: str | None, **kwargs) -> None:
    dim, depth, heads = _WIDTHS[size]
    name = f"vit_{size}_patch{patch}_{img}"
    register_model(
        name,
        VisionTransformer,
        dict(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads),
        _VIT,
        input_size=(3, img, img),
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        crop_pct=0.9 if img == 224 else 1.0,
        url=_HUB.format(f"{name}.{tag}") if tag else None,
        **kwargs,
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
for _size in ("tiny", "small", "base"):
    for _distilled in (False, True):
        _name = f"deit_{_size}{'_distilled' if _distilled else ''}_patch16_224"
        _dim, _depth, _heads = _WIDTHS[_size]
        register_model(
            _name,
            VisionTransformer,
            dict(embed_dim=_dim, depth=_depth, num_heads=_heads, distilled=_distilled),
            _DEIT,
            url=_HUB.format(f"{_name}.fb_in1k"),
            paper=dict(top1=_DEIT_TOP1[_size, _distilled]),
        )
for _name, _distilled in [("deit_base_patch16_384", False), ("deit_base_distilled_patch16_384", True)]:
    register_model(
        _name,
        VisionTransformer,
        dict(img_size=384, embed_dim=768, depth=12, num_heads=12, distilled=_distilled),
        _DEIT,
        input_size=(3, 384, 384),
        crop_pct=1.0,
        url=_HUB.format(f"{_name}.fb_in1k"),
    )
