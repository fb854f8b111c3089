"""CSWin Transformer (Dong et al. 2022, "A General Vision Transformer Backbone with Cross-Shaped Windows").

A four-stage hierarchy (strides 4/8/16/32) whose blocks attend within a *cross-shaped window*:
the channels and heads of a block are split in half; one half attends within vertical stripes of
width sw spanning the full height, the other within horizontal stripes of the same width spanning
the full width, so every token sees the cross formed by its two stripes. The stripe widths grow
with depth ([1, 2, 7, 7] at 224, [1, 2, 12, 12] at 384). In the last stage (and any stage whose
map is as small as its stripes) a single branch with all heads attends over the whole map.
Positions enter through LePE (locally-enhanced positional encoding): a depthwise 3x3 convolution
of V, applied inside each stripe (zero-padded at the stripe borders) and added to the attention
output.
A 7x7 stride-4 convolutional stem and 3x3 stride-2 convolutions between stages (each + LayerNorm)
build the pyramid; the classifier reads the mean of the final, normalised tokens.

The parameter layout is that of microsoft/CSWin-Transformer, so its checkpoints load as they are.
They are training checkpoints evaluated with their EMA weights: `pretrained=True` downloads the
release file and takes them; for a file at hand use `load_checkpoint(model, path, use_ema=True)`.

The stripes and the stripe attention with LePE are in `layers.grouping.stripes`; this file holds
the block and the model. Any input size works, where the official code is fixed to the size it
was built for. A branch whose map does not divide into stripes zero-pads q, k and v on the
bottom/right up to a whole number of stripes; the padded keys are masked out of the softmax (the
mask is part of the cached plan), LePE sees zeros beyond the map edge exactly as it does at every
stripe border, and the padded outputs are cropped. The result is therefore *exactly* attention
with a narrower last stripe: the padding never changes a real token's output. For maps that are
multiples of the stripe width nothing is padded and the computation is the official one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from vitlab.layers import DropPath, Mlp, drop_path_rates
from vitlab.layers.embed import ConvMerge
from vitlab.layers.grouping.stripes import LePEStripeAttention
from vitlab.models.pyramid import Pyramid
from vitlab.registry import Preprocess, register_model
from vitlab.weights import Weights


class ChannelsLast(nn.Module):
    """NCHW -> (B, H, W, C); stands where the official stem has its einops Rearrange (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


class CSWinBlock(nn.Module):
    """Cross-shaped window self-attention and an MLP, each pre-normed and residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        stripe_width: int,
        full_attention: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if not full_attention and num_heads % 2:
            raise ValueError(f"cross-shaped attention splits the heads in half; num_heads {num_heads} is odd")
        scale = (dim // num_heads) ** -0.5  # the same head dimension in both branches
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm1 = norm_layer(dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        if full_attention:
            branches = [LePEStripeAttention(dim, num_heads, stripe_width, None, scale, attn_drop)]
        else:
            branches = [
                LePEStripeAttention(dim // 2, num_heads // 2, stripe_width, axis, scale, attn_drop)
                for axis in ("columns", "rows")
            ]
        self.attns = nn.ModuleList(branches)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.norm2 = norm_layer(dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if len(self.attns) == 1:
            y = self.attns[0](q, k, v)
        else:  # first half of the channels: vertical stripes (of columns); second half: horizontal (of rows)
            half = x.shape[-1] // 2
            vertical = self.attns[0](q[..., :half], k[..., :half], v[..., :half])
            horizontal = self.attns[1](q[..., half:], k[..., half:], v[..., half:])
            y = torch.cat([vertical, horizontal], dim=-1)
        x = x + self.drop_path(self.proj_drop(self.proj(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CSWinTransformer(Pyramid):
    """CSWin Transformer; `forward_features` returns the normalised final map (B, H/32, W/32, C).

    `full_attention[i]` gives stage i a single full-attention branch instead of the two stripe
    branches: the last stage, as officially. (The official code also decides it from the input size
    it is built for, for any stage whose map equals its stripe width; such a configuration is
    written here explicitly, e.g. `full_attention=(False, False, True, True)`.) The model runs at any
    input size of at least 3x3 pixels.
    """

    min_input_size = 3  # the 7x7 stride-4 stem with padding 2
    input_conv = "stage1_conv_embed.0.weight"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depth: Sequence[int] = (2, 2, 6, 2),
        split_size: Sequence[int] = (1, 2, 7, 7),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        full_attention: Sequence[bool] = (False, False, False, True),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__(in_chans, num_classes, img_size)
        if not len(depth) == len(split_size) == len(num_heads) == len(full_attention) == 4:
            raise ValueError(
                f"depth, split_size, num_heads and full_attention need one entry per stage (4), got {depth}, "
                f"{split_size}, {num_heads}, {full_attention}"
            )
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        dims = [embed_dim * 2**i for i in range(4)]

        self.stage1_conv_embed = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=2), ChannelsLast(), norm_layer(embed_dim)
        )
        rates = iter(drop_path_rates(drop_path_rate, sum(depth)))
        for i in range(4):
            block = partial(CSWinBlock, dims[i], num_heads[i], split_size[i], full_attention[i], mlp_ratio, qkv_bias)
            blocks = [block(drop_rate, attn_drop_rate, next(rates), norm_layer) for _ in range(depth[i])]
            self.add_module(f"stage{i + 1}", nn.ModuleList(blocks))
            if i < 3:
                self.add_module(f"merge{i + 1}", ConvMerge(dims[i], dims[i + 1], 3, 2, 1, eps=norm_eps))
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.set_feature_info(dims, [f"stage{i + 1}" for i in range(4)])
        self.add_classifier("head", dims[-1])
        self._init_linear_layers()

    def embed(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.stage1_conv_embed(x)

    def stage_parts(self) -> list[tuple[nn.Module | None, Sequence[nn.Module]]]:
        merges = [None, self.merge1, self.merge2, self.merge3]
        return [(merges[i], getattr(self, f"stage{i + 1}")) for i in range(4)]


_CSWIN = "CSWin: Dong et al. 2022 (microsoft/CSWin-Transformer)"
# The release files named in the official README (the Large ones: ImageNet-22k pre-trained, fine-tuned on 1k).
_RELEASE = "https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/{}.pth"
# name: (embed_dim, depth, num_heads, split_size, official function name, release file, README top-1)
_VARIANTS = {
    "cswin_tiny_224": (64, (1, 2, 21, 1), (2, 4, 8, 16), (1, 2, 7, 7), "CSWin_64_12211_tiny_224", 82.8),
    "cswin_small_224": (64, (2, 4, 32, 2), (2, 4, 8, 16), (1, 2, 7, 7), "CSWin_64_24322_small_224", 83.6),
    "cswin_base_224": (96, (2, 4, 32, 2), (4, 8, 16, 32), (1, 2, 7, 7), "CSWin_96_24322_base_224", 84.2),
    "cswin_large_224": (144, (2, 4, 32, 2), (6, 12, 24, 24), (1, 2, 7, 7), "CSWin_144_24322_large_224", 86.5),
    "cswin_base_384": (96, (2, 4, 32, 2), (4, 8, 16, 32), (1, 2, 12, 12), "CSWin_96_24322_base_384", 85.5),
    "cswin_large_384": (144, (2, 4, 32, 2), (6, 12, 24, 24), (1, 2, 12, 12), "CSWin_144_24322_large_384", 87.5),
}
for _name, (_dim, _depth, _heads, _split, _official, _top1) in _VARIANTS.items():
    _img = int(_name[-3:])
    register_model(
        _name,
        CSWinTransformer,
        dict(img_size=_img, embed_dim=_dim, depth=_depth, num_heads=_heads, split_size=_split),
        f"{_CSWIN}, {_official}",
        tiny=dict(embed_dim=16, depth=(1, 1, 1, 1), num_heads=(2, 2, 4, 4)),
        preprocess=Preprocess((3, _img, _img), crop_pct=0.9 if _img == 224 else 1.0),
        weights=[
            Weights(
                "in22k_ft_in1k" if "large" in _name else "in1k",
                url=_RELEASE.format(_name),
                layout="official",
                ema=True,
                top1=_top1,
                license="mit",
            )
        ],
        paper=dict(top1=_top1),
    )
