"""Pale Transformer (Wu et al. 2022, "A General Vision Transformer Backbone with Pale-Shaped Attention").

Pale-shaped self-attention (PS-Attention) lets every token attend within a *pale*:
s_r rows spread evenly over the height ("interlaced": rows N apart, N = H / s_r) together with
s_c interlaced columns. Its "efficient parallel implementation", implemented in
`layers.grouping.pales` (`PaleShapedAttention`, with the grouping; this file holds the block and
the model), splits the channels in half: one half attends within groups of s_r interlaced rows, the other within groups
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

from torch import Tensor, nn

from vitlab.layers import Mlp, drop_path_rates
from vitlab.layers.blocks import PreNormBlock
from vitlab.layers.embed import ConvEmbed, ConvMerge
from vitlab.layers.grouping.pales import PaleShapedAttention
from vitlab.models.pyramid import Pyramid, Stage
from vitlab.registry import register_model


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
