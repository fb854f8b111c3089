"""ConViT (d'Ascoli et al. 2021, "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases").

A ViT whose first `local_up_to_layer` blocks (10 of 12) replace self-attention by *gated positional
self-attention* (GPSA, section 3): each head mixes a content attention, softmax(q k^T / sqrt(d)),
with a positional attention, softmax(v_pos^T r_ij), where r_ij = (dx, dy, dx^2 + dy^2) is the offset
from query patch i to key patch j. A learned gate per head, sigma(lambda_h), weighs the two (eq. 5):

    A_h = (1 - sigma(lambda_h)) softmax(Q K^T / sqrt(d)) + sigma(lambda_h) softmax(v_pos,h^T r)

The *locality initialisation* (section 3) makes every head start as a convolution-like local
attention: v_pos,h = -alpha (-2 d_h, 1) places head h's peak at offset d_h on a sqrt(heads) x
sqrt(heads) grid around the query (alpha = `locality_strength`), and W_v = I. The remaining
blocks are ordinary multi-head self-attention. The class token joins only there, right before
the first of them (section 3, "the class token is appended after the last GPSA layer"), so GPSA
sees patch tokens only and the position table has no class-token slot.

The parameter layout is timm's (`convit_tiny` etc.), which is the official release's with
`rel_indices` not stored. `embed_dim` here is the total width (timm's argument is the width per
head: timm's embed_dim=48, num_heads=4 is embed_dim=192 here).

Choices where vitlab differs from the references, numerically at rounding level only:
- the references renormalise every row of A_h by its sum, which is already 1 (both softmaxes
  sum to 1 and the gate weights are 1 - s and s); vitlab skips that division;
- the positional attention depends on the input size and the weights, not on the batch: it is
  computed once per layer call and broadcast over the batch (the references compute it per image);
- the offsets r_ij are cached per grid size (and device, dtype) in the shared plan cache.
Any input size works: sides are padded to a multiple of the patch, the position table is resized
bicubically, and the offsets are built for the actual (possibly non-square) grid. timm accepts
only the size it was built for (a fixed position table, square grids).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from vitlab.layers import Mlp, MultiHeadAttention
from vitlab.layers.attention import AttentionLayer, record_attention
from vitlab.layers.blocks import PreNormBlock
from vitlab.layers.grouping import PLANS, Plan
from vitlab.layers.position import resize_pos_embed
from vitlab.models.vit import VisionTransformer
from vitlab.registry import Preprocess, register_model
from vitlab.weights import timm_weights


@dataclass(frozen=True, eq=False)
class PatchOffsets(Plan):
    """r_ij = (dx, dy, dx^2 + dy^2) for every pair of patches i, j of a grid, shape (N, N, 3), raster order.

    dx = column_j - column_i and dy = row_j - row_i, as in the references' `rel_indices`.
    """

    offsets: Tensor


def patch_offsets(size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """The (N, N, 3) offsets of a grid of `size` = (rows, columns), from the shared plan cache.

    While a graph is traced (torch.compile, torch.export, the ONNX tracer) they are built in the graph
    from the traced sizes, so that an exported graph computes them for the size it is given.
    """
    device = torch.device(device)

    def build(size: tuple[int, int]) -> PatchOffsets:
        with torch.inference_mode(False), torch.no_grad():
            rows, cols = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
            rows, cols = rows.reshape(-1).to(device, dtype), cols.reshape(-1).to(device, dtype)
            dx, dy = cols[None, :] - cols[:, None], rows[None, :] - rows[:, None]
            return PatchOffsets(size, size, torch.stack([dx, dy, dx * dx + dy * dy], dim=-1))

    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return build(size).offsets
    size = (int(size[0]), int(size[1]))
    return PLANS.get(("convit-offsets", size, device, dtype), lambda: build(size)).offsets


class GatedPositionalSelfAttention(AttentionLayer):
    """GPSA on a (B, H, W, C) map of patch tokens (ConViT eq. 5); names as timm's `GPSA`.

    `qk` projects queries and keys (no bias by default, as in ConViT), `v` the values, `pos_proj`
    maps the offsets r_ij to one logit per head (v_pos and a bias), `gating_param` holds lambda_h
    (initialised to 1, as in the paper). The attention dropout, when set, drops entries of the mixed
    attention A_h, as the references do.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.locality_strength = locality_strength
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads))

    @torch.no_grad()
    def local_init(self) -> None:
        """The locality initialisation (ConViT section 3): W_v = I and head h peaks at offset d_h.

        Heads are laid on a k x k grid, k = floor(sqrt(heads)), centred on the query; head
        h = a + k b gets the logit -alpha ((dx - (b - c))^2 + (dy - (a - c))^2) up to a constant,
        i.e. v_pos = alpha (2 (b - c), 2 (a - c), -1). With heads that are not a square, the heads
        past k^2 keep their random v_pos, scaled by alpha (as in the references).
        """
        self.v.weight.copy_(torch.eye(self.dim))
        side = int(self.num_heads**0.5)
        centre = (side - 1) / 2
        for a in range(side):
            for b in range(side):
                self.pos_proj.weight[a + side * b] = torch.tensor([2 * (b - centre), 2 * (a - centre), -1.0])
        self.pos_proj.weight.mul_(self.locality_strength)

    def positional_attention(self, size: tuple[int, int], like: Tensor) -> Tensor:
        """softmax_j(v_pos,h^T r_ij + b_h) for the patches of a `size` grid: (heads, N, N)."""
        offsets = patch_offsets(size, like.device, self.pos_proj.weight.dtype)
        return self.pos_proj(offsets).permute(2, 0, 1).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        N = H * W
        q, k = self.qk(x).view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        v = self.v(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        gate = torch.sigmoid(self.gating_param).view(-1, 1, 1)
        content = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        attn = (1.0 - gate) * content + gate * self.positional_attention((H, W), x)
        record_attention(self.attention_store, attn)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))


def convit_block(
    index: int,
    dim: int,
    num_heads: int,
    local_up_to_layer: int,
    locality_strength: float = 1.0,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = False,
    proj_drop: float = 0.0,
    attn_drop: float = 0.0,
    drop_path: float = 0.0,
    norm_layer: type[nn.Module] = nn.LayerNorm,
    **_: object,
) -> PreNormBlock:
    """Block `index`: x + GPSA(LN(x)) on the patch map before `local_up_to_layer`, x + MHSA(LN(x)) on
    the tokens with the class token after; then x + MLP(LN(x))."""
    if index < local_up_to_layer:
        attn = GatedPositionalSelfAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, locality_strength)
    else:
        attn = MultiHeadAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
    return PreNormBlock(dim, attn, Mlp(dim, int(dim * mlp_ratio), drop=proj_drop), drop_path, norm_layer=norm_layer)


class ConViT(VisionTransformer):
    """ConViT: GPSA blocks on the patch map, then the class token, then MHSA blocks (timm's layout).

    The GPSA blocks run on a (B, H, W, C) map, so the grid they need for r_ij travels with the
    tokens. `global_pool` is "token" (the class token) or "avg" (the mean of the normalised patch
    tokens, as timm's "avg": the final `norm` comes before pooling, no `fc_norm`).
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
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        local_up_to_layer: int = 10,
        locality_strength: float = 1.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        if global_pool not in ("token", "avg"):
            raise ValueError(f"ConViT pools by 'token' or 'avg', got {global_pool!r}")
        if not 0 <= local_up_to_layer < depth:
            raise ValueError(f"local_up_to_layer must be in [0, depth={depth}) so that a block sees the class token")
        block = partial(convit_block, local_up_to_layer=local_up_to_layer, locality_strength=locality_strength)
        super().__init__(
            img_size, patch_size, in_chans, num_classes, global_pool, embed_dim, depth, num_heads, mlp_ratio,
            qkv_bias, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            norm_eps=norm_eps, block_fn=block,
        )  # fmt: skip
        self.local_up_to_layer = local_up_to_layer
        # The class token joins after the GPSA blocks: the position table covers the patches only.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.norm, self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps), nn.Identity()
        self._init_convit()

    @torch.no_grad()
    def _init_convit(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, GatedPositionalSelfAttention):
                module.local_init()

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Resize a checkpoint's (square) position table to this model's grid."""
        table = state_dict.get("pos_embed")
        if table is not None and table.shape != self.pos_embed.shape and table.shape[-1] == self.embed_dim:
            try:
                state_dict = {**state_dict, "pos_embed": resize_pos_embed(table, self.grid_size, None, 0)}
            except ValueError:
                return state_dict  # not a table of this model: the strict key check reports it
        return state_dict

    # The forward pass, top-down.
    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch tokens plus positions, as a (B, H, W, C) map (no class token yet), and the grid."""
        self.check_input(x)
        x, grid = self.patch_embed(x)
        x = x + resize_pos_embed(self.pos_embed, grid, self.grid_size, 0)
        return self.pos_drop(x).view(x.shape[0], *grid, -1), grid

    def add_class_token(self, x: Tensor) -> Tensor:
        """The patch map as tokens with the class token prepended, before the first MHSA block."""
        tokens = x.flatten(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        x, _ = self.embed(x)
        x = self.run_blocks(self.blocks[: self.local_up_to_layer], x)
        x = self.run_blocks(self.blocks[self.local_up_to_layer :], self.add_class_token(x))
        return self.norm(x)

    def forward_patch_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tokens, _ = self.embed(x)
        first = tokens.flatten(1, 2)
        tokens = self.run_blocks(self.blocks[: self.local_up_to_layer], tokens)
        tokens = self.norm(self.run_blocks(self.blocks[self.local_up_to_layer :], self.add_class_token(tokens)))
        return self.forward_head(tokens), first, tokens[:, 1:]

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        """The patch tokens after every block, as (B, D, H/p, W/p) maps (the class token left out)."""
        x, (h, w) = self.embed(x)
        for index, block in enumerate(self.blocks):
            if index == self.local_up_to_layer:
                x = self.add_class_token(x)
            x = self.run_blocks([block], x)
            if index < self.local_up_to_layer:
                yield x.permute(0, 3, 1, 2)
            else:
                yield x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)


_CONVIT = "ConViT: d'Ascoli et al. 2021; timm convit_* (the official facebookresearch/convit layout)"
_TINY = dict(embed_dim=32, depth=2, num_heads=4, local_up_to_layer=1)
for _name, _heads, _top1 in [("convit_tiny", 4, 73.1), ("convit_small", 9, 81.3), ("convit_base", 16, 82.4)]:
    register_model(
        _name,
        ConViT,
        dict(embed_dim=48 * _heads, num_heads=_heads, depth=12, local_up_to_layer=10),
        _CONVIT,
        tiny=_TINY,
        preprocess=Preprocess((3, 224, 224)),
        weights=timm_weights(_name),
        paper=dict(top1=_top1),
    )

# vitlab's own configuration for 28x28 images (a data-efficiency study): 7x7 patches of 4x4 pixels,
# 4 GPSA blocks then 2 MHSA blocks; no reference implementation or published weights.
register_model(
    "convit_mini_28",
    ConViT,
    dict(
        img_size=28, in_chans=1, num_classes=10, patch_size=4, embed_dim=80, depth=6, num_heads=4, local_up_to_layer=4
    ),
    "ConViT: d'Ascoli et al. 2021; a 28x28-input configuration of vitlab (no reference weights)",
    tiny=dict(embed_dim=16, depth=2, local_up_to_layer=1),
    preprocess=Preprocess((1, 28, 28), (0.5,), (0.5,), crop_pct=1.0),
)
