"""Attention: one core `attend()` and the multi-head self-attention built on it.

Every attention variant in vitlab (global, windowed, striped, axial, spatial-reduction, ...)
groups its tokens into a batch of independent sequences and calls `attend()` once. `attend()`
runs the fused `F.scaled_dot_product_attention`; the attention probabilities are only
materialised while an `AttentionLayer` is being recorded by `capture_attention`, and even then the
output still comes from the fused kernel, so recording never changes what a model computes.
Layers that cannot use the fused kernel (their logits need more than a bias, as Axial-DeepLab's
batch-normalised position terms) compute their own softmax and hand it to `record_attention`, the
one path by which probabilities reach `capture_attention`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ScoreFn = Callable[[Tensor, Tensor], Tensor]

_explicit = False


@contextmanager
def explicit_attention() -> Iterator[None]:
    """Compute attention with plain matmuls instead of the fused kernel.

    Used to count multiply-accumulates (FLOP counters cannot see inside the fused kernel on CPU)
    and to export to formats that lack the fused operator.
    """
    global _explicit
    previous, _explicit = _explicit, True
    try:
        yield
    finally:
        _explicit = previous


def attention_logits(
    q: Tensor, k: Tensor, bias: Tensor | None = None, scale: float | None = None, score_fn: ScoreFn | None = None
) -> Tensor:
    """The pre-softmax scores `q k^T * scale + bias` (or `score_fn(q, k) + bias`)."""
    if score_fn is not None:
        logits = score_fn(q, k)
    else:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        logits = (q * scale) @ k.transpose(-2, -1)
    if bias is None:
        return logits
    if bias.dtype == torch.bool:
        return logits.masked_fill(~bias, float("-inf"))
    return logits + bias


# Query and key length up to which plain products train faster than the fused kernel on CPU.
_SHORT_SEQUENCE = 64


def _plain_products_train_faster(q: Tensor, k: Tensor, bias: Tensor | None) -> bool:
    """Whether a CPU training step is faster without `scaled_dot_product_attention`.

    Two cases: a learned bias (relative positions), for which the fused CPU kernels give no gradient,
    so the call falls back to its math path, whose safe softmax costs more than the plain products;
    and short sequences, where the flash kernel's backward is slower than the plain products (a
    7x7-token model trains 10% faster per step; at ViT-S/16's 197 tokens the two are even). Both the
    queries and the keys must be short: with many queries on few keys (PVT's spatial reduction, 3136
    queries on 49 keys) the plain products keep every (queries x keys) probability for the backward
    pass: the fused kernel lowered PVT v2 B0's peak training memory by 6%, at a speed within the
    noise (docs/benchmarks.md).
    """
    if q.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    if bias is not None and bias.requires_grad:
        return True
    return q.requires_grad and max(q.shape[-2], k.shape[-2]) <= _SHORT_SEQUENCE


def record_attention(store: list[Tensor] | None, probs: Tensor) -> None:
    """Hand attention probabilities (batch * groups, heads, queries, keys) to `capture_attention`.

    `store` is the layer's `attention_store`, None when the layer is not being recorded (then
    nothing is kept). Probabilities are kept detached, so recording never holds on to a graph.
    """
    if store is not None:
        store.append(probs.detach())


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    score_fn: ScoreFn | None = None,
    store: list[Tensor] | None = None,
) -> Tensor:
    """Scaled dot-product attention, `softmax(q k^T * scale + bias) v` (Vaswani et al., eq. 1).

    Shapes: q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv) -> (..., Nq, dv).
    `bias` is an additive float bias (relative positions, -100 for shifted-window masks) or a bool
    mask in which True means "may attend", broadcastable to (..., Nq, Nk). `scale` defaults to d^-1/2.
    `score_fn(q, k)` replaces the dot product (additive attention); it runs without the fused kernel.
    `store`, when given, receives the probabilities through `record_attention`.
    """
    if bias is not None and bias.dtype != torch.bool and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    if score_fn is not None or _explicit or _plain_products_train_faster(q, k, bias):
        probs = attention_logits(q, k, bias, scale, score_fn).softmax(dim=-1)
        record_attention(store, probs)
        if dropout_p > 0:
            probs = F.dropout(probs, dropout_p)
        return probs @ v
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    if store is not None:  # the fused kernel keeps no probabilities: compute them only when recording
        with torch.no_grad():
            record_attention(store, attention_logits(q, k, bias, scale).softmax(dim=-1))
    return out


def record_positions(store: list[Tensor] | None, positions: Tensor) -> None:
    """Hand the positions a layer sampled its keys at to `capture_attention(..., positions=True)`.

    `store` is the layer's `position_store` (None when not recorded); kept detached like probabilities.
    """
    if store is not None:
        store.append(positions.detach())


POSITIONS_SUFFIX = ":positions"  # a module name never holds ":", so the key cannot clash with a layer's


class AttentionLayer(nn.Module):
    """Base of every module that calls `attend()`; `capture_attention` finds them by this type.

    Subclasses pass `store=self.attention_store` to `attend()`, or, computing their own softmax,
    to `record_attention()`.
    """

    attention_store: list[Tensor] | None = None


class PositionSampler(nn.Module):
    """Base of every module that samples a map at positions it computes from the data (DAT's
    deformable attention, PS-ViT's progressive sampling); `capture_attention(model, positions=True)`
    finds them by this type. Subclasses hand the positions to `record_positions(self.position_store,
    ...)` as (..., 2) (x, y) pixel-index coordinates of the map they sample (pixel centres at integers)
    and document that map's stride.
    """

    position_store: list[Tensor] | None = None


@contextmanager
def capture_attention(model: nn.Module, positions: bool = False) -> Iterator[dict[str, list[Tensor]]]:
    """Record the attention probabilities of every attention layer of `model`.

    Yields a dict from module name to the list of probability tensors the module produced, one
    per call, each of shape (batch * groups, heads, queries, keys) with rows summing to 1. Windowed
    models report per-window probabilities. The model's outputs are unchanged.

        with vitlab.capture_attention(model) as maps:
            logits = model(images)
        probs = maps["blocks.11.attn"][0]

    With `positions=True`, modules that sample at computed positions (`PositionSampler`: DAT's
    deformable attention, PS-ViT's samplers) also report where they sampled, under their name plus
    `POSITIONS_SUFFIX` (`maps["stages.2.attns.1:positions"]`), as (x, y) pixels of the sampled map.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layers to capture")
    maps: dict[str, list[Tensor]] = {name: [] for name, _ in layers}
    samplers = [(n, m) for n, m in model.named_modules() if isinstance(m, PositionSampler)] if positions else []
    for name, module in layers:
        module.attention_store = maps[name]
    for name, module in samplers:
        module.position_store = maps.setdefault(name + POSITIONS_SUFFIX, [])
    try:
        yield maps
    finally:
        for _, module in layers:
            module.attention_store = None
        for _, module in samplers:
            module.position_store = None


class CosineScores(nn.Module):
    """Cosine similarity with a learnable per-head temperature (Swin v2, Liu et al. 2022, eq. 2).

    Folds the temperature into q so that the fused kernel still runs: returns (q', k') with
    q' = exp(tau) * q/|q| and k' = k/|k|, to be attended with scale 1.
    """

    max_logit_scale = math.log(100.0)

    def __init__(self, num_heads: int, init_temperature: float = 10.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(init_temperature)))

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        temperature = self.logit_scale.clamp(max=self.max_logit_scale).exp()
        return F.normalize(q, dim=-1) * temperature, F.normalize(k, dim=-1)


class AdditiveScores(nn.Module):
    """Additive (MLP) scoring, `w_h^T tanh(q_i + k_j)` per head (Bahdanau et al. 2015).

    q and k are already the projections W_q x_i and W_k x_j, so only the scoring vector w is new.
    Materialises a (..., Nq, Nk, d) tensor: meant for study and small inputs.
    """

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_heads, head_dim) * head_dim**-0.5)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        hidden = torch.tanh(q.unsqueeze(-2) + k.unsqueeze(-3))
        return torch.einsum("bhqkd,hd->bhqk", hidden, self.weight)


SIMILARITIES = ("dot", "cosine", "additive")


class MultiHeadAttention(AttentionLayer):
    """Multi-head self-attention over a token sequence (Vaswani et al. 2017, section 3.2.2).

    Parameter names follow timm (`qkv` fused in q, k, v order, then `proj`), so ViT and DeiT
    checkpoints load directly. `similarity` picks how queries meet keys: "dot" (scaled dot
    product), "cosine" (learnable temperature) or "additive".
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        similarity: str = "dot",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.similarity = similarity
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if similarity == "cosine":
            self.scores = CosineScores(num_heads)
        elif similarity == "additive":
            self.scores = AdditiveScores(num_heads, self.head_dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scale, score_fn = None, None
        if self.similarity == "cosine":
            q, k = self.scores(q, k)
            scale = 1.0
        elif self.similarity == "additive":
            score_fn = self.scores
        dropout_p = self.attn_drop if self.training else 0.0
        x = attend(q, k, v, scale=scale, score_fn=score_fn, dropout_p=dropout_p, store=self.attention_store)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))
