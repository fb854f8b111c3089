"""CeiT (Yuan et al. 2021, "Incorporating Convolution Designs into Visual Transformers").

Three changes to ViT/DeiT (section 3):
- Image-to-tokens (I2T, section 3.1): a 7x7 stride-2 convolution, BatchNorm and a 3x3 stride-2
  max-pool (no ReLU, as in the official code) make a 1/4 map of 64 channels, which 4x4 patches then
  turn into tokens: the tokens are 16x16-pixel cells, like ViT-B/16's.
- The locally-enhanced feed-forward (LeFF, section 3.2) replaces the MLP: the patch tokens go back
  to their grid, a 1x1 convolution expands them (+ BN + GELU), a 3x3 depthwise convolution mixes
  neighbours (+ BN + GELU), a 1x1 convolution projects back (+ BN, no activation after it in the
  official code). The class token is not part of the grid: LeFF hands its input's class token back
  unchanged, so with the residual the class token becomes x_cls + LN(x)_cls (official code).
- Layer-wise class-token attention (LCA, section 3.3): the class tokens that the L blocks output
  (plus a learned per-layer embedding `pos_layer_embed`) form a sequence; one more block attends
  from the last of them to all of them (the query is the last token only) and adds its result to
  that last token, followed by a plain MLP. Its normalised output is classified.

The parameter layout is the official release's (coeusguo/ceit, `ceit_model.py`): `i2t.backbone.conv`
/ `bn`, `i2t.proj`, `blocks.i.{norm1, attn.qkv, attn.proj, norm2, leff.conv1..bn3}`, `lca.{norm1,
attn, norm2, feedforward.fc1, fc2}`, `pos_layer_embed`, `norm`, `head`; its checkpoints load natively.
Any input size works, where the official code needs the square size it was built for: sides are
zero-padded to a multiple of 16, the position table is resized bicubically, and LeFF reshapes to the
actual (possibly non-square) grid, which the blocks pass along with the tokens. Left out: the
official `leff_with_bn=False` option (LeFF without BatchNorm), which no released model uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers import Mlp, MultiHeadAttention, attend, drop_path_rates
from vitlab.layers.attention import AttentionLayer
from vitlab.layers.drop import DropPath
from vitlab.layers.grouping import pad_to_multiple
from vitlab.layers.position import resize_pos_embed
from vitlab.models.base import Backbone
from vitlab.registry import Preprocess, register_model

Grid = tuple[int, int]


class ConvPoolStem(nn.Module):
    """Conv k x k stride 2 (no bias) -> BatchNorm -> max-pool 3x3 stride 2: a 1/4 map (the official `Image2Tokens`)."""

    def __init__(self, in_chans: int = 3, out_chans: int = 64, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride=2, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(self.bn(self.conv(x)))


class ImageToTokens(nn.Module):
    """I2T (CeiT section 3.1): the conv-pool stem, then `proj_size` x `proj_size` patches of its map as tokens.

    Returns (B, N, D) tokens in raster order and the grid. The total stride (`patch_size`) is
    4 * `proj_size`; inputs are zero-padded to a multiple of it, so the stem's map divides into
    whole patches (the official code runs only at sizes where it does).
    """

    input_conv = "backbone.conv"

    def __init__(self, in_chans: int, embed_dim: int, stem_chans: int = 64, proj_size: int = 4):
        super().__init__()
        self.backbone = ConvPoolStem(in_chans, stem_chans)
        self.proj = nn.Conv2d(stem_chans, embed_dim, proj_size, proj_size)
        self.patch_size = (4 * proj_size, 4 * proj_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        x = self.proj(self.backbone(pad_to_multiple(x, self.patch_size)))
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])


class LocallyEnhancedFeedForward(nn.Module):
    """LeFF (CeiT section 3.2, Fig. 3) on (B, 1 + N, C) tokens whose N patches form `grid`.

    1x1 conv (C -> hidden) + BN + GELU, depthwise k x k conv + BN + GELU, 1x1 conv (hidden -> C) + BN,
    on the patch map; the class token is returned as it came in (official code).
    """

    def __init__(self, dim: int, hidden: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size, padding=(kernel_size - 1) // 2, groups=hidden)
        self.conv3 = nn.Conv2d(hidden, dim, 1)
        self.act = nn.GELU()
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(hidden), nn.BatchNorm2d(hidden), nn.BatchNorm2d(dim)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        cls_token, tokens = x[:, :1], x[:, 1:]
        fmap = tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)
        fmap = self.act(self.bn1(self.conv1(fmap)))
        fmap = self.act(self.bn2(self.conv2(fmap)))
        fmap = self.bn3(self.conv3(fmap))
        return torch.cat([cls_token, fmap.flatten(2).transpose(1, 2)], dim=1)


class CeiTBlock(nn.Module):
    """x + MSA(LN(x)), then x + LeFF(LN(x)). Takes and returns (tokens, grid), so that `run_blocks`
    (and its checkpointing) carries the patch grid to LeFF."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        kernel_size: int = 3,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = norm_layer(dim)
        self.leff = LocallyEnhancedFeedForward(dim, int(dim * mlp_ratio), kernel_size)
        self.drop_path = DropPath(drop_path)

    def forward(self, inputs: tuple[Tensor, Grid]) -> tuple[Tensor, Grid]:
        x, grid = inputs
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.leff(self.norm2(x), grid)), grid


class LayerClassTokenAttention(AttentionLayer):
    """LCA's attention (CeiT section 3.3): the last token queries every token of the sequence.

    Shares timm's names (`qkv`, `proj`): q is the first third of `qkv` applied to the last token,
    k and v the other two thirds applied to all tokens. Returns (B, 1, C).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, -1:], weight[:C], None if bias is None else bias[:C])
        kv = F.linear(x, weight[C:], None if bias is None else bias[C:])
        q = q.view(B, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout_p = self.attn_drop if self.training else 0.0
        x = attend(q, k, v, dropout_p=dropout_p, store=self.attention_store).transpose(1, 2).reshape(B, 1, C)
        return self.proj_drop(self.proj(x))


class LCABlock(nn.Module):
    """last + LCA(LN(x)), then + MLP(LN(.)): the class tokens of all layers -> one token (B, 1, C)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float, norm_layer
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = LayerClassTokenAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = norm_layer(dim)
        self.feedforward = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, -1:] + self.attn(self.norm1(x))
        return x + self.feedforward(self.norm2(x))


class CeiT(Backbone):
    """CeiT: I2T tokens, L blocks of attention and LeFF, then LCA over the L class tokens, norm, head.

    `proj_size` is the patch of the token projection on the stem's 1/4 map (the official
    `patch_size`, 4 in every released model), so tokens cover 16x16 pixels. `forward_features`
    returns the normalised LCA output, one token (B, 1, D); `iter_features` the patch tokens after
    every block.
    """

    feature_format = "NLC"
    has_patch_tokens = True
    global_pool = "token"
    num_prefix_tokens = 1
    input_conv = "i2t.backbone.conv.weight"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        proj_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        stem_chans: int = 64,
        leff_kernel_size: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__(in_chans, num_classes, img_size)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.embed_dim = self.num_features = embed_dim
        self.i2t = ImageToTokens(in_chans, embed_dim, stem_chans, proj_size)
        self.patch_size = self.i2t.patch_size
        self.grid_size = tuple(-(-s // p) for s, p in zip(self.img_size, self.patch_size, strict=True))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        block = partial(CeiTBlock, embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            [block(drop_path=rates[i], norm_layer=norm_layer, kernel_size=leff_kernel_size) for i in range(depth)]
        )
        self.pos_layer_embed = nn.Parameter(torch.zeros(1, depth, embed_dim))  # zeros at init, as official
        self.lca = LCABlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, norm_layer)
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.add_classifier("head", embed_dim)
        reduction = self.patch_size[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)]
        self.default_out_indices = tuple(depth * q // 4 - 1 for q in (1, 2, 3, 4))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self._init_linear_layers()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "pos_layer_embed"}

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Resize a checkpoint's position table to this model's grid (e.g. 224 -> 384)."""
        table = state_dict.get("pos_embed")
        if table is not None and table.shape != self.pos_embed.shape and table.shape[-1] == self.embed_dim:
            try:
                state_dict = {**state_dict, "pos_embed": resize_pos_embed(table, self.grid_size, None, 1)}
            except ValueError:
                return state_dict  # not a table of this model: the strict key check reports it
        return state_dict

    # The forward pass, top-down.
    def embed(self, x: Tensor) -> tuple[Tensor, Grid]:
        """I2T tokens with the class token prepended and positions added; the grid."""
        self.check_input(x)
        x, grid = self.i2t(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + resize_pos_embed(self.pos_embed, grid, self.grid_size, 1)), grid

    def run_encoder(self, x: Tensor) -> Iterator[tuple[Tensor, Grid]]:
        """(tokens, grid) after each block, in order."""
        inputs = self.embed(x)
        for block in self.blocks:
            inputs = self.run_blocks([block], inputs)
            yield inputs

    def layer_class_attention(self, class_tokens: list[Tensor]) -> Tensor:
        """LCA over the blocks' class tokens (+ their layer embedding), normalised: (B, 1, D)."""
        return self.norm(self.lca(torch.stack(class_tokens, dim=1) + self.pos_layer_embed))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.layer_class_attention([tokens[:, 0] for tokens, _ in self.run_encoder(x)])

    def forward_patch_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        first = self.embed(x)[0][:, 1:]
        outputs = [tokens for tokens, _ in self.run_encoder(x)]
        features = self.layer_class_attention([tokens[:, 0] for tokens in outputs])
        return self.forward_head(features), first, outputs[-1][:, 1:]

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        """The patch tokens after every block, as (B, D, H/16, W/16) maps."""
        for tokens, grid in self.run_encoder(x):
            yield tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

    def blocks_in_depth_order(self) -> list[nn.Module]:
        return [*self.blocks, self.lca]


_CEIT = "CeiT: Yuan et al. 2021; official coeusguo/ceit (ceit_model.py)"
_TINY = dict(embed_dim=24, depth=2, num_heads=2, stem_chans=8)
_WIDTHS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
_TOP1 = {("tiny", 224): 76.4, ("small", 224): 82.0, ("base", 224): 82.5, ("tiny", 384): 78.8, ("small", 384): 83.3}
for (_size, _img), _top1 in _TOP1.items():
    _dim, _heads = _WIDTHS[_size]
    register_model(
        f"ceit_{_size}_patch16_{_img}",
        CeiT,
        dict(img_size=_img, embed_dim=_dim, depth=12, num_heads=_heads),
        _CEIT,
        tiny=_TINY,
        # The official evaluation (DeiT's) resizes to int(256 / 224 * size) and crops the centre.
        preprocess=Preprocess((3, _img, _img), crop_pct=_img / int(256 / 224 * _img)),
        paper=dict(top1=_top1),
    )

# vitlab's own configuration for 28x28 images (a data-efficiency study): the I2T stem to a 7x7 map,
# tokens of one stem pixel; no reference implementation or published weights.
register_model(
    "ceit_mini_28",
    CeiT,
    dict(img_size=28, in_chans=1, num_classes=10, proj_size=1, stem_chans=32, embed_dim=64, depth=7, num_heads=4),
    "CeiT: Yuan et al. 2021; a 28x28-input configuration of vitlab (no reference weights)",
    tiny=dict(embed_dim=16, depth=2, num_heads=2, stem_chans=8),
    preprocess=Preprocess((1, 28, 28), (0.5,), (0.5,), crop_pct=1.0),
)
