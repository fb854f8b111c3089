"""T2T-ViT: Tokens-to-Token ViT (Yuan et al. 2021, "Tokens-to-Token ViT: Training Vision Transformers from
Scratch on ImageNet").

A ViT whose patchify stem is replaced by the tokens-to-token module (section 3.1): the image is cut
into overlapping 7x7 patches (a "soft split", stride 4), a small transformer layer (the "T2T
layer") mixes these tokens, the tokens are put back on their grid ("re-structurization") and cut
again into overlapping 3x3 neighbourhoods (stride 2), which concatenates each token with its
neighbours; twice, then a linear projection to the backbone's width. The backbone is a plain ViT
(section 3.2, a deep-narrow one) with a class token and a fixed sinusoidal position table.

The T2T layers come in two kinds, both of which keep the value as the skip connection because the
width changes (C k^2 in, `token_dim` out):
- `TokenPerformer` (the T2T-ViT-n models): linear attention through positive random features
  (Performer, Choromanski et al. 2021, FAVOR+), with a fixed random projection `w`;
- `TokenTransformer` (the T2T-ViT_t-n models): one-head softmax attention.

The parameter layout is the official release's (yitu-opensource/T2T-ViT, models/t2t_vit.py), whose
checkpoints load strictly: they carry the Performer's random features `w` and the sinusoidal
`pos_embed`, both frozen parameters (`requires_grad=False`), which vitlab loads and uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from vitlab.layers import Mlp, attend, record_attention, sinusoidal_1d
from vitlab.models.vit import VisionTransformer
from vitlab.registry import Preprocess, register_model
from vitlab.weights import Weights

SoftSplit = tuple[int, int, int]  # (kernel, stride, padding) of one nn.Unfold
T2T_SPLITS: tuple[SoftSplit, ...] = ((7, 4, 2), (3, 2, 1), (3, 2, 1))  # the paper's (section 3.3)


def orthogonal_random_features(num_features: int, dim: int) -> Tensor:
    """The Performer's projection as the official code draws it: orthogonal rows scaled by sqrt(num_features)."""
    w = torch.empty(num_features, dim)
    if w.device.type != "meta":
        nn.init.orthogonal_(w)
    return w * math.sqrt(num_features)


class TokenPerformer(nn.Module):
    """A T2T layer with Performer attention (official `Token_performer`, one head).

    With k, q, v = kqv(LN(x)) (split in that order) and the positive random features
    phi(x) = exp(w x - |x|^2 / 2) / sqrt(m) (FAVOR+, Choromanski et al. 2021, Lemma 1),
    y = v + proj(phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + 1e-8)), then y + MLP(LN(y)).
    The kernel estimates exp(q . k) without the 1/sqrt(d) softmax scale, as the official code does,
    and costs O(N m d) instead of O(N^2 d): the N x N matrix is never formed in the forward pass.
    `w` (m = kernel_ratio * in_dim rows) is drawn once and frozen; released checkpoints carry it.
    The kernel runs in at least float32 (the official code casts to float32), with autocast off.
    Dropout 0.1 after the projection and after the MLP is fixed, as in the official layer.
    Not recorded by `capture_attention` (see `T2TViT`); when `attention_store` is a list (set by
    `vitlab.analysis.record_layers(..., embedding=True)`), the implicit N x N weights the output is
    made with, phi(Q) phi(K)^T / (phi(Q) phi(K)^T 1 + 1e-8), are formed and handed to it.
    """

    epsilon = 1e-8
    attention_store: list[Tensor] | None = None

    def __init__(self, dim: int, in_dim: int, kernel_ratio: float = 0.5, drop: float = 0.1):
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Linear(dim, 3 * in_dim)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim), nn.Dropout(drop))
        self.m = int(in_dim * kernel_ratio)
        self.w = nn.Parameter(orthogonal_random_features(self.m, in_dim), requires_grad=False)

    def random_features(self, x: Tensor) -> Tensor:
        """phi(x) = exp(w x - |x|^2 / 2) / sqrt(m): (B, N, d) -> (B, N, m), positive."""
        half_norm = x.square().sum(dim=-1, keepdim=True) / 2
        return torch.exp(x @ self.w.to(x.dtype).T - half_norm) / math.sqrt(self.m)

    def linear_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dtype = torch.promote_types(v.dtype, torch.float32)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        qp, kp = self.random_features(q), self.random_features(k)  # (B, N, m)
        normaliser = qp @ kp.sum(dim=1).unsqueeze(-1) + self.epsilon  # (B, N, 1)
        if self.attention_store is not None:  # analysis only: the weights are otherwise never formed
            record_attention(self.attention_store, (qp @ kp.transpose(1, 2) / normaliser).unsqueeze(1))
        return qp @ (v.transpose(1, 2) @ kp).transpose(1, 2) / normaliser  # phi(Q) (phi(K)^T V), (B, N, d)

    def forward(self, x: Tensor) -> Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.emb, dim=-1)
        device = x.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                y = self.linear_attention(q, k, v)
        else:
            y = self.linear_attention(q, k, v)
        y = v + self.dp(self.proj(y.to(v.dtype)))  # the value is the skip connection: the width changed
        return y + self.mlp(self.norm2(y))


class TokenAttention(nn.Module):
    """One-head softmax attention from `dim` to `in_dim` channels, plus the value as the skip connection.

    The logits are scaled by dim^-1/2, the *input* width (147 or 576), not in_dim^-1/2, as in the official
    `token_transformer.Attention`; qkv has no bias. Not recorded by `capture_attention` (see `T2TViT`);
    `vitlab.analysis.record_layers(..., embedding=True)` records it through `attention_store`.
    """

    attention_store: list[Tensor] | None = None

    def __init__(self, dim: int, in_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.scale = dim**-0.5
        self.qkv = nn.Linear(dim, in_dim * 3, bias=False)
        self.proj = nn.Linear(in_dim, in_dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, 1, self.in_dim).permute(2, 0, 3, 1, 4)
        y = attend(q, k, v, scale=self.scale, store=self.attention_store).squeeze(1)
        return v.squeeze(1) + self.proj(y)


class TokenTransformer(nn.Module):
    """A T2T layer with softmax attention (official `Token_transformer`): y = attn(LN(x)), y + MLP(LN(y))."""

    def __init__(self, dim: int, in_dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, in_dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio), in_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def unfold_size(side: int, split: SoftSplit) -> int:
    """The number of positions of a soft split along a side: floor((side + 2p - k) / s) + 1."""
    kernel, stride, padding = split
    return (side + 2 * padding - kernel) // stride + 1


class TokensToToken(nn.Module):
    """The T2T module (section 3.1): soft split, then (T2T layer, re-structurization, soft split) twice,
    then `project` to the backbone's width. (B, C, H, W) -> tokens (B, N, embed_dim) and their grid.

    `splits` are the three soft splits as (kernel, stride, padding); the paper's are (7, 4, 2), (3, 2, 1),
    (3, 2, 1): a 224 image gives 14 x 14 tokens. The official code restores the grid as a square
    (sqrt N); here the grid is tracked, so non-square images work too.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 768,
        tokens_type: str = "performer",
        token_dim: int = 64,
        splits: Sequence[SoftSplit] = T2T_SPLITS,
    ):
        super().__init__()
        if tokens_type not in ("performer", "transformer"):
            raise ValueError(f"tokens_type must be 'performer' or 'transformer', got {tokens_type!r}")
        if len(splits) != 3:
            raise ValueError(f"the T2T module has three soft splits, got {len(splits)}")
        self.splits = [tuple(s) for s in splits]
        for i, (kernel, stride, padding) in enumerate(self.splits):
            self.add_module(f"soft_split{i}", nn.Unfold(kernel, padding=padding, stride=stride))
        layer = TokenPerformer if tokens_type == "performer" else TokenTransformer
        self.attention1 = layer(in_chans * self.splits[0][0] ** 2, token_dim)
        self.attention2 = layer(token_dim * self.splits[1][0] ** 2, token_dim)
        self.project = nn.Linear(token_dim * self.splits[2][0] ** 2, embed_dim)
        stride = math.prod(s[1] for s in self.splits)
        self.patch_size = (stride, stride)
        # The smallest side for which every soft split yields a position (3 for the paper's splits).
        self.min_input_size = next(n for n in range(1, 1 << 16) if self.grid_size((n, n))[0] >= 1)

    input_conv = "attention1.kqv"  # no convolution sees the image: unfold, LayerNorm, then this linear layer

    def grid_size(self, size: Sequence[int]) -> tuple[int, int]:
        """The token grid of an image of `size` (height, width)."""
        h, w = size
        for split in self.splits:
            h, w = unfold_size(h, split), unfold_size(w, split)
        return h, w

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        size = (unfold_size(x.shape[-2], self.splits[0]), unfold_size(x.shape[-1], self.splits[0]))
        x = self.soft_split0(x).transpose(1, 2)  # (B, N, C k^2): channels in (C, kh, kw) order
        layers, unfolds = (self.attention1, self.attention2), (self.soft_split1, self.soft_split2)
        steps = zip(layers, self.splits[1:], unfolds, strict=True)
        for layer, split, unfold in steps:
            x = layer(x)
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)  # re-structurization
            size = (unfold_size(size[0], split), unfold_size(size[1], split))
            x = unfold(x).transpose(1, 2)
        return self.project(x), size


class T2TViT(VisionTransformer):
    """T2T-ViT: the tokens-to-token module as the embedding of a ViT (section 3.2).

    The backbone blocks are ViT's (qkv without bias, LayerNorm eps 1e-5, as the official code). The
    class token's final state is classified. `tokens_type` picks the T2T layers ("performer" or
    "transformer"), `token_dim` their width, `splits` the soft splits.

    Position table: the official code adds a fixed 1-D sinusoid (Vaswani et al., section 3.5) over
    the class token and the raster-ordered grid of `img_size`, a frozen parameter that checkpoints
    carry. It is built for the grid of `img_size` and, at another input size, resized bicubically
    to the input's grid (class slot kept) like every vitlab ViT; the official transfer-learning code
    resizes it the same way when it changes the resolution (without antialiasing).

    `capture_attention` records the backbone blocks' attention (class token and patch tokens), the maps
    that class-token attention and attention rollout read. The two T2T layers are left out: their
    tokens are those of the soft splits (3136 and 784 at 224), which a rollout through the blocks
    cannot multiply with, and their maps would take 40 MB per image; the Performer's is only implicit.
    The analysis records them on request (`vitlab.analysis.record_layers(model, x, embedding=True)`,
    `vitlab attention`), each over the grid of its soft split.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        tokens_type: str = "performer",
        token_dim: int = 64,
        splits: Sequence[SoftSplit] = T2T_SPLITS,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        embed = partial(TokensToToken, tokens_type=tokens_type, token_dim=token_dim, splits=splits)
        super().__init__(
            img_size, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=False, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_eps=1e-5, embed_layer=embed,
        )  # fmt: skip
        # The official checkpoints name the embedding `tokens_to_token`: it is registered under that name
        # (first, so block_order puts it with the embedding); `patch_embed` is an alias (see below).
        self._modules = {("tokens_to_token" if n == "patch_embed" else n): m for n, m in self._modules.items()}
        self.input_conv = f"tokens_to_token.{TokensToToken.input_conv}.weight"
        self.min_input_size = self.tokens_to_token.min_input_size
        self.grid_size = self.tokens_to_token.grid_size(self.img_size)
        table = sinusoidal_1d(self.grid_size[0] * self.grid_size[1] + 1, embed_dim).unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=False)

    @property
    def patch_embed(self) -> nn.Module:
        """The embedding under the name VisionTransformer uses (`tokens_to_token` once built)."""
        return self._modules["tokens_to_token" if "tokens_to_token" in self._modules else "patch_embed"]

    def _init_weights(self) -> None:
        super()._init_weights()
        nn.init.trunc_normal_(self.cls_token, std=0.02)  # as the official code


_T2T = "T2T-ViT: Yuan et al. 2021 (yitu-opensource/T2T-ViT)"
# The release files named in the official README; they are training checkpoints, evaluated with their EMA weights.
_RELEASE = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/{}.pth.tar"
_TINY = dict(embed_dim=32, depth=2, num_heads=2, token_dim=16)
# name: (embed_dim, depth, num_heads, mlp_ratio, tokens_type, release file, README top-1)
_VARIANTS = {
    "t2t_vit_7": (256, 7, 4, 2.0, "performer", "71.7_T2T_ViT_7", 71.7),
    "t2t_vit_10": (256, 10, 4, 2.0, "performer", "75.2_T2T_ViT_10", 75.2),
    "t2t_vit_12": (256, 12, 4, 2.0, "performer", "76.5_T2T_ViT_12", 76.5),
    "t2t_vit_14": (384, 14, 6, 3.0, "performer", "81.5_T2T_ViT_14", 81.5),
    "t2t_vit_19": (448, 19, 7, 3.0, "performer", "81.9_T2T_ViT_19", 81.9),
    "t2t_vit_24": (512, 24, 8, 3.0, "performer", "82.3_T2T_ViT_24", 82.3),
    "t2t_vit_t_14": (384, 14, 6, 3.0, "transformer", "81.7_T2T_ViTt_14", 81.7),
    "t2t_vit_t_19": (448, 19, 7, 3.0, "transformer", "82.4_T2T_ViTt_19", 82.4),
    "t2t_vit_t_24": (512, 24, 8, 3.0, "transformer", "82.6_T2T_ViTt_24", 82.6),
}
for _name, (_dim, _depth, _heads, _mlp, _tokens, _file, _top1) in _VARIANTS.items():
    register_model(
        _name,
        T2TViT,
        dict(embed_dim=_dim, depth=_depth, num_heads=_heads, mlp_ratio=_mlp, tokens_type=_tokens),
        f"{_T2T}, models/t2t_vit.py {_name}",
        tiny=_TINY,
        preprocess=Preprocess((3, 224, 224), crop_pct=0.9),
        weights=[Weights("in1k", url=_RELEASE.format(_file), layout="official", ema=True, top1=_top1)],
        paper=dict(top1=_top1),
    )

# vitlab's own small T2T-ViT for 28x28 images (MNIST-sized), not a configuration of the paper: soft splits of
# 3x3 (stride 2, 2, 1) give 7x7 tokens of stride 4, and a narrow backbone keeps it near 0.45M parameters.
register_model(
    "t2t_vit_mini_28",
    T2TViT,
    dict(
        img_size=28,
        in_chans=1,
        num_classes=10,
        embed_dim=96,
        depth=5,
        num_heads=4,
        mlp_ratio=2.0,
        tokens_type="performer",
        token_dim=32,
        splits=((3, 2, 1), (3, 2, 1), (3, 1, 1)),
    ),  # fmt: skip
    f"{_T2T}; t2t_vit_mini_28 is a small-image configuration of vitlab (not in the paper)",
    tiny=dict(embed_dim=32, depth=2, num_heads=2, token_dim=16),
    preprocess=Preprocess((1, 28, 28), (0.5,), (0.5,), crop_pct=1.0),
)
