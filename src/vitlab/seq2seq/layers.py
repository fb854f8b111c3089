"""The encoder and decoder layers of "Attention Is All You Need" (Vaswani et al. 2017, section 3.1)
and their stacks, built on the shared `attend()`.

Every attention is `EncoderDecoderAttention`: queries from one sequence, keys and values from the
same one (self-attention) or from the encoder's output (cross-attention, "encoder-decoder
attention" in the paper). It passes its mask to `attend()` as a bool mask (True: may attend), so
padding and causality go through the one attention path, and `capture_attention` records it.

Post-norm is the paper's layer (x = LayerNorm(x + Sublayer(x)), section 3.1); pre-norm
(x = x + Sublayer(LayerNorm(x)), Wang et al. 2019, `torch.nn.Transformer(norm_first=True)`) trains
without warmup at depth. Parameter names: `self_attn` / `cross_attn` with `q`, `kv` (keys and
values fused) and `proj`; `mlp.fc1` / `mlp.fc2`; `norm1..3`; the stacks' optional final `norm`.
`vitlab.layouts.seq2seq` converts `torch.nn.Transformer`'s names to these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vitlab.layers.attention import AttentionLayer, attend
from vitlab.layers.mlp import Mlp
from vitlab.seq2seq.base import attention_mask


class EncoderDecoderAttention(AttentionLayer):
    """Multi-head attention (section 3.2.2), `Concat(head_1..h) W^O` with head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    `forward(x, source, padding, causal, state)`: queries from `x` (batch, n, dim); keys and values
    from `source` (None: from `x`, self-attention). `padding` (batch, keys; True at padding) masks
    keys; `causal` adds the causal mask. `state` (a dict, decoding only) keeps the keys and values:
    a self-attention appends the new positions' to those of earlier calls, a cross-attention
    computes the memory's once.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = True, attn_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.attn_dropout = num_heads, dim // num_heads, attn_dropout
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def _heads(self, x: Tensor) -> Tensor:
        # view with the input's sizes, not unflatten: the ONNX tracer reads an unflattened tensor's sizes as
        # constants, and the causal mask (sized from them) would then hold the traced lengths.
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        source: Tensor | None = None,
        padding: Tensor | None = None,
        causal: bool = False,
        state: dict[str, Tensor] | None = None,
    ) -> Tensor:
        cross = source is not None
        if cross and state is not None and "k" in state:
            k, v = state["k"], state["v"]
        else:
            k, v = (self._heads(t) for t in self.kv(source if cross else x).chunk(2, dim=-1))
            if state is not None and not cross and "k" in state:
                k, v = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
            if state is not None:
                state["k"], state["v"] = k, v
        q = self._heads(self.q(x))
        offset = k.shape[2] - q.shape[2] if causal else None
        mask = attention_mask(padding, q.shape[2], offset, q.device)
        dropout = self.attn_dropout if self.training else 0.0
        out = attend(q, k, v, bias=mask, dropout_p=dropout, store=self.attention_store)
        return self.proj(out.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """Self-attention, then a position-wise feed-forward network, max(0, x W1 + b1) W2 + b2 (eq. 2)."""

    cross_attention = False  # the decoder's layer adds attention over the encoder's output

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, attn_dropout: float = 0.0,
                 norm_first: bool = False, eps: float = 1e-5):  # fmt: skip
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = EncoderDecoderAttention(dim, num_heads, attn_dropout=attn_dropout)
        if self.cross_attention:
            self.cross_attn = EncoderDecoderAttention(dim, num_heads, attn_dropout=attn_dropout)
        self.mlp = Mlp(dim, ffn_dim, act_layer=nn.ReLU, drop=dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        if self.cross_attention:
            self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def sublayer(self, x: Tensor, norm: nn.Module, fn) -> Tensor:
        """The residual connection: `fn` ends with its residual dropout (section 5.4); post- or pre-norm."""
        return x + fn(norm(x)) if self.norm_first else norm(x + fn(x))

    def forward(self, x: Tensor, padding: Tensor | None = None) -> Tensor:
        x = self.sublayer(x, self.norm1, lambda y: self.drop(self.self_attn(y, padding=padding)))
        return self.sublayer(x, self.norm2, self.mlp)  # the Mlp's second dropout is the residual dropout


class DecoderLayer(EncoderLayer):
    """Causal self-attention, attention over the encoder's output, then the feed-forward network (section 3.1)."""

    cross_attention = True

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding: Tensor | None = None,
        padding: Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> Tensor:
        own = None if state is None else state.setdefault("self", {})
        other = None if state is None else state.setdefault("cross", {})
        x = self.sublayer(
            x, self.norm1, lambda y: self.drop(self.self_attn(y, padding=padding, causal=True, state=own))
        )
        x = self.sublayer(x, self.norm2, lambda y: self.drop(self.cross_attn(y, memory, memory_padding, state=other)))
        return self.sublayer(x, self.norm3, self.mlp)


def _maybe_checkpoint(enabled: bool, fn, *args: Any) -> Tensor:
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class TransformerEncoder(nn.Module):
    """N encoder layers; `final_norm` adds a LayerNorm after the last (what pre-norm needs, and what
    `torch.nn.Transformer` always has)."""

    def __init__(self, depth: int, dim: int, final_norm: bool, eps: float = 1e-5, **layer_args: Any):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, eps=eps, **layer_args) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps) if final_norm else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, x: Tensor, padding: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = _maybe_checkpoint(self.grad_checkpointing, layer, x, padding)
        return self.norm(x)


class TransformerDecoder(nn.Module):
    """N decoder layers and the optional final LayerNorm; `state` (decoding) holds one dict per layer."""

    def __init__(self, depth: int, dim: int, final_norm: bool, eps: float = 1e-5, **layer_args: Any):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, eps=eps, **layer_args) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps) if final_norm else nn.Identity()
        self.grad_checkpointing = False

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding: Tensor | None = None,
        padding: Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> Tensor:
        for i, layer in enumerate(self.layers):
            if state is not None:
                x = layer(x, memory, memory_padding, padding, state.setdefault(i, {}))
            else:
                x = _maybe_checkpoint(self.grad_checkpointing, layer, x, memory, memory_padding, padding)
        return self.norm(x)


class EncoderDecoder(nn.Module):
    """The encoder and decoder stacks without embeddings: the counterpart of `torch.nn.Transformer`,
    whose state dicts load into it (post-norm with `final_norm=True`, as nn.Transformer always adds
    the final norms, or `norm_first=True`)."""

    def __init__(self, d_model: int = 512, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 2048, dropout: float = 0.1, attn_dropout: float = 0.0,
                 norm_first: bool = False, final_norm: bool | None = None, norm_eps: float = 1e-5):  # fmt: skip
        super().__init__()
        final_norm = norm_first if final_norm is None else final_norm
        args = dict(num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, attn_dropout=attn_dropout,
                    norm_first=norm_first)  # fmt: skip
        self.encoder = TransformerEncoder(num_encoder_layers, d_model, final_norm, norm_eps, **args)
        self.decoder = TransformerDecoder(num_decoder_layers, d_model, final_norm, norm_eps, **args)

    def forward(self, src: Tensor, tgt: Tensor, src_padding: Tensor | None = None,
                tgt_padding: Tensor | None = None) -> Tensor:  # fmt: skip
        """Decoder output (batch, target length, d_model) for embedded `src` and `tgt`; causal in `tgt`."""
        return self.decoder(tgt, self.encoder(src, src_padding), src_padding, tgt_padding)
