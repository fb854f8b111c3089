"""Pyramid Vision Transformer, v1 (Wang et al. 2021, ICCV) and v2 (Wang et al. 2022, CVMJ).

PVT v1 (section 3) builds a four-stage pyramid (strides 4, 8, 16, 32) of transformer blocks. Each
stage opens with a patch embedding (a convolution of kernel = stride = 4, then 2, + LayerNorm) and
a learned positional embedding of its own; the blocks use spatial-reduction attention (SRA, eq.
2-4: keys and values from the map reduced by a strided convolution of ratio R = 8/4/2/1, see
`layers.grouping.reduction`) and a plain MLP. A class token joins at the last stage, and the
classifier reads it after the final LayerNorm.

PVT v2 (section 3) keeps the pyramid and changes three things: overlapping patch embedding
(7x7 stride 4, then 3x3 stride 2, zero-padded, + LayerNorm), a convolutional feed-forward
(a depthwise 3x3 convolution between fc1 and GELU) in place of positional embeddings, and, for
`pvt_v2_b2_li`, linear SRA (pooling to 7x7, 1x1 conv, LN, GELU) with a ReLU after fc1. Each stage
ends with its own LayerNorm; the classifier reads the mean of the last stage's tokens.

Layouts: v1 keeps the official release's names (whai362/PVT, classification/pvt.py: `patch_embed1`,
`pos_embed1`, `block1.0`, `cls_token`); v2 keeps timm's (`patch_embed`, `stages.1.downsample`,
`stages.0.blocks.0`, `stages.0.norm`). The official v2 release and HF transformers' `Pvt*` and
`PvtV2*` checkpoints convert on load (`layouts/pvt.py`). Block norms use eps 1e-6, patch-embedding
and reduction norms PyTorch's 1e-5, as the official code and timm do (`norm_eps`, `embed_norm_eps`;
HF uses its one `layer_norm_eps` everywhere, which its config reader sets).

Input sizes, as the references: v1's convolutions floor (a 230-pixel side gives 57, 28, 14, 7
tokens) and its positional tables, made for `img_size`, are resized bilinearly (no antialiasing,
align_corners=False, in the table's dtype) to every other grid, as the official `_get_pos_embed`
does (docs/pvt.md notes the one kind of size where the two differ; HF's v1 runs only at its size).
v2's padded convolutions give ceil(side / 4), then halve with ceil. The strided reductions floor
too, so a stage map needs at least R tokens a side: `min_input_size` says how many pixels that
takes (32 for v1, 29 for v2, 1 with linear SRA).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers import drop_path_rates
from vitlab.layers.blocks import PreNormBlock
from vitlab.layers.grouping.reduction import SpatialReductionAttention
from vitlab.layers.mlp import Mlp
from vitlab.models.base import Backbone
from vitlab.models.pyramid import Pyramid
from vitlab.registry import Preprocess, register_model
from vitlab.weights import Weights, timm_weights


class ConvPatchEmbed(nn.Module):
    """A convolution then LayerNorm over channels: NCHW in, (B, H', W', C) out (`proj`, `norm`).

    PVT v1: kernel = stride (4, then 2), no padding; PVT v2: "overlapping" 7x7/4 and 3x3/2, padded
    by half the kernel.
    """

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, padding: int = 0, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvFeedForward(nn.Module):
    """PVT v2's feed-forward on a (B, H, W, C) map: fc1, [ReLU,] depthwise 3x3, GELU, fc2 (section 3.2).

    The ReLU after fc1 belongs to the linear-SRA models (`extra_relu`); names are timm's
    (`fc1`, `dwconv`, `fc2`).
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, extra_relu: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.fc1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.drop(self.fc2(self.drop(self.act(x))))


def pvt_block(
    dim: int,
    num_heads: int,
    mlp_ratio: float,
    sr_ratio: int,
    *,
    version: int,
    linear: bool = False,
    qkv_bias: bool = True,
    drop: float = 0.0,
    attn_drop: float = 0.0,
    drop_path: float = 0.0,
    norm_eps: float = 1e-6,
    embed_norm_eps: float = 1e-5,
) -> PreNormBlock:
    """x + SRA(LN(x)), then x + FFN(LN(x)): v1's MLP, or v2's convolutional feed-forward."""
    attn = SpatialReductionAttention(dim, num_heads, sr_ratio, linear, qkv_bias, attn_drop, drop, embed_norm_eps)
    hidden = int(dim * mlp_ratio)
    mlp = Mlp(dim, hidden, drop=drop) if version == 1 else ConvFeedForward(dim, hidden, drop, extra_relu=linear)
    return PreNormBlock(dim, attn, mlp, drop_path, norm_layer=partial(nn.LayerNorm, eps=norm_eps))


def _check_stages(**lists: Sequence) -> None:
    if len({len(v) for v in lists.values()}) != 1:
        raise ValueError("need one entry per stage in " + ", ".join(f"{k}={tuple(v)}" for k, v in lists.items()))


class PyramidVisionTransformer(Backbone):
    """PVT v1; `forward_features` returns the normalised last-stage tokens, class token first (B, 1 + N, C).

    `img_size` sizes the positional tables (stage i's grid is img_size // patch_size // 2^i, as
    the official code computes it for patch 4). The class token joins the last stage, whose
    attention must therefore be global (`sr_ratios[-1]` 1, as in every published variant).
    """

    feature_format = "NLC"
    global_pool = "token"
    num_prefix_tokens = 1
    input_conv = "patch_embed1.proj.weight"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (2, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        embed_norm_eps: float = 1e-5,
    ):
        super().__init__(in_chans, num_classes, img_size)
        _check_stages(embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios, depths=depths, sr=sr_ratios)
        if sr_ratios[-1] != 1:
            raise ValueError(f"the class token joins the last stage, whose sr_ratio must be 1, got {sr_ratios[-1]}")
        self.num_stages = len(depths)
        strides = [patch_size * 2**i for i in range(self.num_stages)]
        self.min_input_size = max(s * max(r, 1) for s, r in zip(strides, sr_ratios, strict=True))
        grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.pos_grids = [(grid[0] // 2**i, grid[1] // 2**i) for i in range(self.num_stages)]
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        common = dict(version=1, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate)
        common.update(norm_eps=norm_eps, embed_norm_eps=embed_norm_eps)
        for i, (dim, depth) in enumerate(zip(embed_dims, depths, strict=True)):
            chans, kernel = (in_chans, patch_size) if i == 0 else (embed_dims[i - 1], 2)
            self.add_module(f"patch_embed{i + 1}", ConvPatchEmbed(chans, dim, kernel, kernel, eps=embed_norm_eps))
            prefix = int(i == self.num_stages - 1)
            table = nn.Parameter(torch.zeros(1, prefix + self.pos_grids[i][0] * self.pos_grids[i][1], dim))
            self.register_parameter(f"pos_embed{i + 1}", table)
            blocks = [
                pvt_block(dim, num_heads[i], mlp_ratios[i], sr_ratios[i], drop_path=next(rates), **common)
                for _ in range(depth)
            ]
            self.add_module(f"block{i + 1}", nn.ModuleList(blocks))
        self.pos_drop = nn.Dropout(drop_rate)
        self.norm = nn.LayerNorm(embed_dims[-1], eps=norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
        self.head_drop = nn.Identity()
        self.feature_info = [
            dict(num_chs=d, reduction=s, module=f"block{i + 1}")
            for i, (d, s) in enumerate(zip(embed_dims, strides, strict=True))
        ]
        self.default_out_indices = tuple(range(self.num_stages))
        self.num_features = embed_dims[-1]
        self.add_classifier("head", embed_dims[-1])
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        self._init_linear_layers()
        for i in range(self.num_stages):
            nn.init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def pos_embed(self, stage: int, grid: tuple[int, int]) -> Tensor:
        """Stage `stage`'s positional table for a (h, w) grid, class slot first at the last stage."""
        table = getattr(self, f"pos_embed{stage + 1}")
        prefix = int(stage == self.num_stages - 1)
        return torch.cat([table[:, :prefix], resize_grid_table(table[:, prefix:], self.pos_grids[stage], grid)], 1)

    def iter_stage_outputs(self, x: Tensor) -> Iterator[tuple[Tensor, tuple[int, int]]]:
        """Every stage's output and grid: (B, h, w, C) maps, then the last stage's (B, 1 + h*w, C) tokens."""
        self.check_input(x)
        for i in range(self.num_stages):
            x = getattr(self, f"patch_embed{i + 1}")(x)
            B, h, w, C = x.shape
            pos = self.pos_embed(i, (h, w))
            if i == self.num_stages - 1:
                x = torch.cat([self.cls_token.expand(B, -1, -1), x.flatten(1, 2)], dim=1)
            else:
                pos = pos.view(1, h, w, C)
            x = self.run_blocks(getattr(self, f"block{i + 1}"), self.pos_drop(x + pos))
            yield x, (h, w)
            if x.ndim == 4:
                x = x.permute(0, 3, 1, 2)

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        for out, (h, w) in self.iter_stage_outputs(x):
            if out.ndim == 3:  # the last stage: its patch tokens, without the class token
                out = out[:, self.num_prefix_tokens :].reshape(out.shape[0], h, w, -1)
            yield out.permute(0, 3, 1, 2)

    def forward_features(self, x: Tensor) -> Tensor:
        *_, (tokens, _) = self.iter_stage_outputs(x)
        return self.norm(tokens)

    def blocks_in_depth_order(self) -> list[nn.Module]:
        return [block for i in range(self.num_stages) for block in getattr(self, f"block{i + 1}")]

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}  # as the official code (its positional tables are decayed)

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Positional tables made for another `img_size` (square grids) resized to this model's, bilinearly."""
        out = dict(state_dict)
        for i in range(self.num_stages):
            key, prefix = f"pos_embed{i + 1}", int(i == self.num_stages - 1)
            table = out.get(key)
            own = getattr(self, key)
            if table is None or table.ndim != 3 or table.shape == own.shape or table.shape[-1] != own.shape[-1]:
                continue  # equal, or not this model's table: the strict load reports it
            side = round((table.shape[1] - prefix) ** 0.5)
            resized = resize_grid_table(table[:, prefix:], (side, side), self.pos_grids[i])
            out[key] = torch.cat([table[:, :prefix], resized], dim=1)
        return out


def resize_grid_table(table: Tensor, old: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """A (1, h*w, C) table on an `old` grid, bilinearly resampled to `new` (PVT v1's `_get_pos_embed`)."""
    if tuple(old) == tuple(new):
        return table
    if old[0] * old[1] != table.shape[1]:
        raise ValueError(f"positional table has {table.shape[1]} grid entries, not {old[0]}x{old[1]}")
    grid = table.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


class PvtV2Stage(nn.Module):
    """One PVT v2 stage in timm's layout: `downsample` (overlapping patch embedding), `blocks`, `norm`."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module], dim: int, eps: float):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=eps)


class PyramidVisionTransformerV2(Pyramid):
    """PVT v2; `forward_features` returns the last stage's normalised map (B, H/32, W/32, C).

    Every stage output is normalised by its stage's LayerNorm (that is what the next stage sees,
    and what `features_only` returns, as in timm). Runs at any size of at least
    `min_input_size` pixels (1 with linear SRA).
    """

    input_conv = "patch_embed.proj.weight"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        linear: bool = False,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        embed_norm_eps: float = 1e-5,
    ):
        super().__init__(in_chans, num_classes, img_size)
        _check_stages(embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios, depths=depths, sr=sr_ratios)
        strides = [4 * 2**i for i in range(len(depths))]
        # ceil(side / stride) tokens must be at least the reduction ratio R: side > stride * (R - 1).
        self.min_input_size = 1 if linear else max(s * (r - 1) + 1 for s, r in zip(strides, sr_ratios, strict=True))
        self.patch_embed = ConvPatchEmbed(in_chans, embed_dims[0], 7, 4, 3, embed_norm_eps)
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        common = dict(version=2, linear=linear, qkv_bias=qkv_bias, drop=proj_drop_rate, attn_drop=attn_drop_rate)
        common.update(norm_eps=norm_eps, embed_norm_eps=embed_norm_eps)
        stages = []
        for i, (dim, depth) in enumerate(zip(embed_dims, depths, strict=True)):
            downsample = ConvPatchEmbed(embed_dims[i - 1], dim, 3, 2, 1, embed_norm_eps) if i else None
            blocks = [
                pvt_block(dim, num_heads[i], mlp_ratios[i], sr_ratios[i], drop_path=next(rates), **common)
                for _ in range(depth)
            ]
            stages.append(PvtV2Stage(downsample, blocks, dim, norm_eps))
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.set_feature_info(embed_dims, [f"stages.{i}" for i in range(len(depths))])
        self.add_classifier("head", embed_dims[-1])
        self._init_linear_layers()

    def embed(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.patch_embed(x)

    def stage_parts(self) -> list[tuple[nn.Module | None, Sequence[nn.Module]]]:
        return [(stage.downsample, stage.blocks) for stage in self.stages]

    def iter_stages(self, x: Tensor) -> Iterator[Tensor]:
        """Every stage's normalised (B, H, W, C) output."""
        x = self.embed(x)
        for stage in self.stages:
            if stage.downsample is not None:
                x = stage.downsample(x.permute(0, 3, 1, 2))
            x = stage.norm(self.run_blocks(stage.blocks, x))
            yield x

    def forward_features(self, x: Tensor) -> Tensor:
        *_, last = self.iter_stages(x)
        return last


_V1 = "PVT v1: Wang et al. 2021 (whai362/PVT, classification/pvt.py)"
_V2 = "PVT v2: Wang et al. 2022 (whai362/PVT v2 branch, classification/pvt_v2.py; timm pvt_v2)"
_V1_TINY = dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))
_V2_TINY = dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))
_V1_DEPTHS = dict(tiny=(2, 2, 2, 2), small=(3, 4, 6, 3), medium=(3, 4, 18, 3), large=(3, 8, 27, 3))
_V1_TOP1 = dict(tiny=75.1, small=79.8, medium=81.2, large=81.7)  # paper Table 2
for _size, _depths in _V1_DEPTHS.items():
    register_model(
        f"pvt_{_size}",
        PyramidVisionTransformer,
        dict(depths=_depths),
        f"{_V1}, pvt_{_size}",
        tiny=_V1_TINY,
        preprocess=Preprocess((3, 224, 224), crop_pct=0.875),
        paper=dict(top1=_V1_TOP1[_size]),
        # the official release converted to HF transformers' layout (the repository HF's PVT docs name)
        weights=[
            Weights(
                "in1k",
                hf_hub_id=f"Xrenya/pvt-{_size}-224",
                filename="pytorch_model.bin",
                layout="hf",
                config_file="config.json",
                license="apache-2.0",
            )
        ],  # fmt: skip
    )

_WIDE = (64, 128, 320, 512)
_V2_VARIANTS = {  # name: (embed_dims, depths, mlp_ratios, linear, README top-1)
    "pvt_v2_b0": ((32, 64, 160, 256), (2, 2, 2, 2), (8, 8, 4, 4), False, 70.5),
    "pvt_v2_b1": (_WIDE, (2, 2, 2, 2), (8, 8, 4, 4), False, 78.7),
    "pvt_v2_b2": (_WIDE, (3, 4, 6, 3), (8, 8, 4, 4), False, 82.0),
    "pvt_v2_b2_li": (_WIDE, (3, 4, 6, 3), (8, 8, 4, 4), True, 82.1),
    "pvt_v2_b3": (_WIDE, (3, 4, 18, 3), (8, 8, 4, 4), False, 83.1),
    "pvt_v2_b4": (_WIDE, (3, 8, 27, 3), (8, 8, 4, 4), False, 83.6),
    "pvt_v2_b5": (_WIDE, (3, 6, 40, 3), (4, 4, 4, 4), False, 83.8),
}
for _name, (_dims, _depths, _mlp, _linear, _top1) in _V2_VARIANTS.items():
    register_model(
        _name,
        PyramidVisionTransformerV2,
        dict(embed_dims=_dims, depths=_depths, mlp_ratios=_mlp, linear=_linear),
        f"{_V2}, {_name}",
        tiny=_V2_TINY,
        preprocess=Preprocess((3, 224, 224), crop_pct=0.9),
        weights=timm_weights(_name),
        paper=dict(top1=_top1),
    )
