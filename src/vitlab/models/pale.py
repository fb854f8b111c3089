"""Pale Transformer (Wu et al. 2022, "A General Vision Transformer Backbone with Pale-Shaped Attention").

Pale-shaped self-attention (PS-Attention) lets every token attend within a *pale*:
s_r rows spread evenly over the height ("interlaced": rows N apart, N = H / s_r) together with
s_c interlaced columns. Its "efficient parallel implementation", which this file implements, splits the
channels in half: one half attends within groups of s_r interlaced rows, the other within groups
of s_c interlaced columns, and the two outputs are concatenated and projected. A token's row
group and column group together form its pale. Stacked in a four-stage pyramid like CSWin's, the
blocks mix positions through a conditional position encoding (a depthwise convolution) before
attention.

No official code was released (the paper promised it in BR-IDL/PaddleViT; it never appeared), so
this is an implementation from the paper. What the text leaves open, and what was assumed here:

- Grouping: row y belongs to row group y mod N_r, N_r = ceil(H / s_r) (column groups likewise),
  so each group spans the whole height with rows N_r apart. For H a multiple of s_r this is the
  paper's layout; otherwise the groups hold s_r or s_r - 1 rows: the map is zero-padded at the
  bottom/right to whole groups and the padded keys are masked out of the softmax, so padding
  never changes a real token's output. A side shorter than s_r is one group (full attention
  along it), which is what the last stage (7x7 at 224, pale size 7) gets: full attention.
- Projections: one linear layer makes q, k, v for all channels (with bias), split in half after
  the projection; each branch has half the heads; the branches' outputs are concatenated and
  projected by a linear layer. (The paper's parallel implementation mentions separable convolutions "following
  CvT" for the projections; the text retrievable here did not say how a 3x3 depthwise convolution
  would apply to groups of non-adjacent rows, so plain linear projections are used; depthwise
  convolutions before them would add about 1% to the MACs and parameters.)
- Head dimension 32 for Pale-T and Pale-B (heads 2/4/8/16 and 4/8/16/32) and 24 for Pale-S
  (heads 4/8/16/32, as CSWin-B at the same width): each branch needs an even head count.
- Conditional position encoding: x + DWConv3x3(x) (with bias, zero padding) at the start of
  every block, before the pre-norm attention and MLP residuals (as CPVT's PEG).
- Stem: 7x7 convolution with stride 4 (padding 2) + LayerNorm; downsampling between stages: 3x3
  convolution with stride 2 (padding 1) + LayerNorm, doubling the channels. MLP ratio 4, GELU.
  Head: LayerNorm, mean over tokens, linear classifier.
- Depths [2, 2, 16, 2], widths 64/96/128, pale size 7 in every stage. The architecture table
  itself could not be retrieved; these values come from secondary notes and reproduce the
  paper's totals: 21.57M/48.04M/84.96M parameters and 4.16/8.92/15.46 GMACs at 224 against
  22M/48M/85M and 4.2/9.0/15.6G (MACs 0.9% under on all three; depthwise convolutions in the
  q/k/v projections, if the paper has them, would add about that much).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from vitlab.layers import Mlp, drop_path_rates
from vitlab.layers.attention import AttentionLayer, attend
from vitlab.layers.blocks import PreNormBlock
from vitlab.layers.embed import ConvEmbed, ConvMerge
from vitlab.layers.local import (
    batch_mask,
    column_groups_to_image,
    image_to_column_groups,
    image_to_row_groups,
    pad_bottom_right,
    pale_groups,
    pale_key_mask,
    row_groups_to_image,
)
from vitlab.models.pyramid import Pyramid, Stage
from vitlab.registry import register_model


class InterlacedAttention(AttentionLayer):
    """Multi-head attention within groups of `group_size` interlaced rows (or columns).

    Takes the already projected q, k, v of its half of the channels as (B, H, W, dim) maps and
    returns (B, H, W, dim). All groups of the batch go through one `attend()` call.
    """

    def __init__(self, num_heads: int, group_size: int, axis: str, scale: float, attn_drop: float = 0.0):
        super().__init__()
        if axis not in ("rows", "columns"):
            raise ValueError(f"axis must be 'rows' or 'columns', got {axis!r}")
        self.num_heads = num_heads
        self.group_size = group_size
        self.axis = axis
        self.scale = scale
        self.attn_drop = attn_drop

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, W, C = q.shape
        rows = self.axis == "rows"
        side = H if rows else W
        groups = pale_groups(side, self.group_size)
        lines = -(-side // groups)  # lines per group after padding
        padded = (groups * lines, W) if rows else (H, groups * lines)
        to_groups = image_to_row_groups if rows else image_to_column_groups

        def group(t: Tensor) -> Tensor:  # (B, H, W, C) -> (B * groups, heads, L, C / heads)
            t = to_groups(pad_bottom_right(t, padded), groups)
            return t.view(t.shape[0], t.shape[1], self.num_heads, -1).transpose(1, 2)

        q, k, v = group(q), group(k), group(v)
        mask = batch_mask(pale_key_mask((H, W), padded, groups, self.axis, q.device), B)
        dropout_p = self.attn_drop if self.training else 0.0
        x = attend(q, k, v, bias=mask, scale=self.scale, dropout_p=dropout_p, store=self.attention_store)
        x = x.transpose(1, 2).flatten(2)
        x = row_groups_to_image(x, groups, padded) if rows else column_groups_to_image(x, groups, padded)
        return x[:, :H, :W]


class PaleShapedAttention(nn.Module):
    """PS-Attention in its parallel form.

    q, k, v for all channels, then the first half attends within interlaced row groups (`rows`),
    the second within interlaced column groups (`columns`); concatenated and projected.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        pale_size: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads or num_heads % 2:
            raise ValueError(f"pale attention splits dim {dim} and num_heads {num_heads} in half: both must divide")
        scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rows = InterlacedAttention(num_heads // 2, pale_size, "rows", scale, attn_drop)
        self.columns = InterlacedAttention(num_heads // 2, pale_size, "columns", scale, attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        half = x.shape[-1] // 2
        rows = self.rows(q[..., :half], k[..., :half], v[..., :half])
        columns = self.columns(q[..., half:], k[..., half:], v[..., half:])
        return self.proj_drop(self.proj(torch.cat([rows, columns], dim=-1)))


class PaleBlock(PreNormBlock):
    """Conditional position encoding, x + DWConv3x3(x), then pre-norm PS-Attention and MLP residuals."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        pale_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        attn = PaleShapedAttention(dim, num_heads, pale_size, qkv_bias, attn_drop, drop)
        super().__init__(dim, attn, Mlp(dim, int(dim * mlp_ratio), drop=drop), drop_path, norm_layer=norm_layer)
        self.cpe = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        return super().forward(x + self.cpe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class PaleTransformer(Pyramid):
    """Pale Transformer; `forward_features` returns the normalised final map (B, H/32, W/32, C).

    Runs at any input size of at least 3x3 pixels (see the module docstring for the padding).
    `img_size` is accepted like every model's; no parameter depends on it.
    """

    min_input_size = 3  # the 7x7 stride-4 stem with padding 2
    input_conv = "stem.conv.weight"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 64,
        depth: Sequence[int] = (2, 2, 16, 2),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        pale_size: Sequence[int] = (7, 7, 7, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__(in_chans, num_classes, img_size)
        if not len(depth) == len(num_heads) == len(pale_size) == 4:
            raise ValueError(
                f"depth, num_heads and pale_size need one entry per stage (4), got {depth}, {num_heads}, {pale_size}"
            )
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        dims = [embed_dim * 2**i for i in range(4)]

        self.stem = ConvEmbed(in_chans, embed_dim, 7, 4, 2, eps=norm_eps)
        rates = iter(drop_path_rates(drop_path_rate, sum(depth)))
        stages = []
        for i in range(4):
            block = partial(PaleBlock, dims[i], num_heads[i], pale_size[i], mlp_ratio, qkv_bias)
            blocks = [block(drop_rate, attn_drop_rate, next(rates), norm_layer) for _ in range(depth[i])]
            downsample = ConvMerge(dims[i - 1], dims[i], 3, 2, 1, eps=norm_eps) if i else None
            stages.append(Stage(downsample, blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.set_feature_info(dims, [f"stages.{i}" for i in range(4)])
        self.add_classifier("head", dims[-1])
        self._init_linear_layers()

    def embed(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.stem(x)

    def stage_parts(self) -> list[tuple[nn.Module | None, Sequence[nn.Module]]]:
        return [(stage.downsample, stage.blocks) for stage in self.stages]


_PALE = "Pale: Wu et al. 2022 (arXiv 2112.14000), implemented from the paper (no official code)"
# name: (embed_dim, num_heads, top-1 from the abstract)
_VARIANTS = {
    "pale_tiny_224": (64, (2, 4, 8, 16), 83.4),
    "pale_small_224": (96, (4, 8, 16, 32), 84.3),
    "pale_base_224": (128, (4, 8, 16, 32), 84.9),
}
for _name, (_dim, _heads, _top1) in _VARIANTS.items():
    register_model(
        _name,
        PaleTransformer,
        dict(embed_dim=_dim, depth=(2, 2, 16, 2), num_heads=_heads, pale_size=(7, 7, 7, 7)),
        _PALE,
        tiny=dict(embed_dim=16, depth=(1, 1, 1, 1), num_heads=(2, 2, 4, 4)),
        paper=dict(top1=_top1),
    )
