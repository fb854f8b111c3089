"""The recurrent encoder-decoders the Transformer replaced: LSTM or GRU, with additive attention
(Bahdanau et al. 2015, "Neural Machine Translation by Jointly Learning to Align and Translate")
or multiplicative attention (Luong et al. 2015, "Effective Approaches to Attention-based Neural
Machine Translation", the "general" score with input feeding).

Both read the source with a bidirectional RNN and decode one position at a time; that sequential
dependence is what the Transformer removed (its section 4). Their attention goes through the shared
`attend()`, so `capture_attention` records it like any other.

- Bahdanau: the previous decoder state s_{i-1} scores every annotation h_j with
  e_ij = v^T tanh(W s_{i-1} + U h_j) (their eq. 6, vitlab's `AdditiveScores`); the context c_i and
  the previous word feed the RNN; the output reads [s_i; c_i; E y_{i-1}] through one linear layer
  (the paper's maxout deep output is left out).
- Luong: the RNN runs first on [E y_{t-1}; h~_{t-1}] (input feeding, their section 3.3), then
  score(h_t, h_s) = h_t^T W_a h_s (their eq. 8, "general"), h~_t = tanh(W_c [c_t; h_t]) (eq. 5)
  and the logits W_s h~_t (eq. 6).
- vitlab's choices: the decoder's initial state is tanh(W [forward final; backward first]) of the
  encoder (Bahdanau's initialisation uses the backward state only); LSTM cells start at zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vitlab.layers.attention import AdditiveScores, AttentionLayer, attend
from vitlab.registry import register_model
from vitlab.seq2seq.base import PAD, Memory, Seq2SeqModel, check_padding, check_tokens

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
ATTENTIONS = ("bahdanau", "luong")


class RecurrentAttention(AttentionLayer):
    """One query per step against the encoder's annotations: additive (Bahdanau) or general (Luong)."""

    def __init__(self, kind: str, query_dim: int, memory_dim: int, attention_dim: int):
        super().__init__()
        self.kind = kind
        if kind == "bahdanau":
            self.query = nn.Linear(query_dim, attention_dim, bias=False)  # W
            self.key = nn.Linear(memory_dim, attention_dim)  # U
            self.scores = AdditiveScores(1, attention_dim)  # v
        else:
            self.key = nn.Linear(memory_dim, query_dim, bias=False)  # W_a, applied to the annotations once

    def keys(self, memory: Tensor) -> Tensor:
        """The annotations projected once per source: (batch, 1 head, source length, dim)."""
        return self.key(memory).unsqueeze(1)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, padding: Tensor | None) -> Tensor:
        """The context vector (batch, memory_dim) for a query (batch, query_dim)."""
        mask = None if padding is None else ~padding[:, None, None, :]
        values = memory.unsqueeze(1)
        if self.kind == "bahdanau":
            q = self.query(query)[:, None, None, :]
            out = attend(q, keys, values, bias=mask, score_fn=self.scores, store=self.attention_store)
        else:
            out = attend(query[:, None, None, :], keys, values, bias=mask, scale=1.0, store=self.attention_store)
        return out[:, 0, 0]


class RecurrentSeq2Seq(Seq2SeqModel):
    """A bidirectional LSTM/GRU encoder and an attentive LSTM/GRU decoder over token ids."""

    def __init__(
        self,
        src_vocab_size: int = 16,
        tgt_vocab_size: int | None = None,
        cell: str = "gru",
        attention: str = "bahdanau",
        embed_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        tgt_vocab_size = tgt_vocab_size or src_vocab_size
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.cell, self.attention, self.hidden_size, self.num_layers = cell, attention, hidden_size, num_layers
        rnn, H = CELLS[cell], hidden_size
        between = dropout if num_layers > 1 else 0.0
        self.src_embed = nn.Embedding(src_vocab_size, embed_dim, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, embed_dim, padding_idx=PAD)
        self.encoder = rnn(embed_dim, H, num_layers, batch_first=True, bidirectional=True, dropout=between)
        self.bridge = nn.Linear(2 * H, num_layers * H)
        self.attn = RecurrentAttention(attention, H, 2 * H, H)
        feed = 2 * H if attention == "bahdanau" else H  # Bahdanau feeds the context, Luong h~
        self.decoder = rnn(embed_dim + feed, H, num_layers, batch_first=True, dropout=between)
        if attention == "bahdanau":
            self.output = nn.Linear(H + 2 * H + embed_dim, tgt_vocab_size)
        else:
            self.combine = nn.Linear(2 * H + H, H, bias=False)  # W_c
            self.output = nn.Linear(H, tgt_vocab_size)  # W_s
        self.drop = nn.Dropout(dropout)

    def encode(self, src: Tensor, src_padding: Tensor | None = None) -> Memory:
        check_tokens(src, self.src_vocab_size, "src")
        check_padding(src_padding, src, "src_padding")
        x = self.drop(self.src_embed(src))
        if src_padding is None:
            states, final = self.encoder(x)
        else:
            lengths = (~src_padding).sum(dim=1)
            if not torch.equal(src_padding, torch.arange(src.shape[1], device=src.device) >= lengths[:, None]):
                raise ValueError("src_padding must mark the end of each sequence: the recurrent encoder reads "
                                 "right-padded sources")  # fmt: skip
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            states, final = self.encoder(packed)
            states = pad_packed_sequence(states, batch_first=True, total_length=src.shape[1])[0]
        h = final[0] if isinstance(final, tuple) else final  # (layers * 2, batch, H)
        last = torch.cat([h[-2], h[-1]], dim=-1)  # the top layer's forward final and backward first states
        init = torch.tanh(self.bridge(last)).view(len(src), self.num_layers, self.hidden_size)
        return Memory(states, src_padding, init)

    def _start(self, memory: Memory) -> dict[str, Any]:
        state: dict[str, Any] = {"length": 0, "h": memory.final, "keys": self.attn.keys(memory.states)}
        if self.cell == "lstm":
            state["c"] = torch.zeros_like(memory.final)
        if self.attention == "luong":
            state["feed"] = memory.states.new_zeros(len(memory.states), self.hidden_size)
        return state

    def _step(self, y: Tensor, memory: Memory, state: dict[str, Any]) -> Tensor:
        """One decoder step for the previous tokens `y` (batch,); updates `state`, returns logits (batch, V)."""
        e = self.drop(self.tgt_embed(y))
        hidden = state["h"].transpose(0, 1).contiguous()  # (layers, batch, H)
        hidden = (hidden, state["c"].transpose(0, 1).contiguous()) if self.cell == "lstm" else hidden
        if self.attention == "bahdanau":
            context = self.attn(state["h"][:, -1], state["keys"], memory.states, memory.padding)
            out, hidden = self.decoder(torch.cat([e, context], dim=-1).unsqueeze(1), hidden)
            logits = self.output(self.drop(torch.cat([out[:, 0], context, e], dim=-1)))
        else:
            out, hidden = self.decoder(torch.cat([e, state["feed"]], dim=-1).unsqueeze(1), hidden)
            context = self.attn(out[:, 0], state["keys"], memory.states, memory.padding)
            state["feed"] = torch.tanh(self.combine(torch.cat([context, out[:, 0]], dim=-1)))
            logits = self.output(self.drop(state["feed"]))
        if self.cell == "lstm":
            hidden, cell = hidden
            state["c"] = cell.transpose(0, 1)
        state["h"] = hidden.transpose(0, 1)
        return logits

    def decode(self, tgt: Tensor, memory: Memory, cache: dict[str, Any] | None = None) -> Tensor:
        check_tokens(tgt, self.tgt_vocab_size, "tgt")
        if len(tgt) != len(memory.states):
            raise ValueError(f"tgt has {len(tgt)} sequences, the encoded source {len(memory.states)}")
        state = self._start(memory) if cache is None or "h" not in cache else cache
        logits = torch.stack([self._step(tgt[:, t], memory, state) for t in range(tgt.shape[1])], dim=1)
        state["length"] += tgt.shape[1]
        if cache is not None:
            cache.update(state)
        return logits


_RNN = {"bahdanau": "Bahdanau et al. 2015 (additive attention)", "luong": "Luong et al. 2015 (general attention)"}
_TINY = dict(src_vocab_size=11, embed_dim=8, hidden_size=8)

for _cell in CELLS:
    for _attention in ATTENTIONS:
        register_model(
            f"{_cell}_{_attention}_small", RecurrentSeq2Seq,
            dict(cell=_cell, attention=_attention, src_vocab_size=14, embed_dim=64, hidden_size=128),
            _RNN[_attention], task="sequence-to-sequence", tiny={**_TINY}, num_classes=14,
        )  # fmt: skip
