"""The Transformer of "Attention Is All You Need" (Vaswani et al. 2017): token embeddings scaled by
sqrt(d_model), positional encodings, the encoder and decoder stacks (`vitlab.seq2seq.layers`) and
the pre-softmax linear map to the target vocabulary.

The paper's choices, and where vitlab chooses:
- Embeddings are multiplied by sqrt(d_model) (section 3.4); the paper shares one matrix between
  the two embeddings and the pre-softmax projection (a shared source-target BPE vocabulary of
  37,000 tokens for English-German): `share_embeddings` and `tie_output`. The output projection has
  no bias (the paper names none). Embeddings are drawn from N(0, d_model^-1), so that scaled they
  have unit variance (tensor2tensor's and fairseq's choice; the paper does not say); every other
  matrix is Xavier-uniform, as `torch.nn.Transformer` initialises.
- Positions: the fixed sinusoids of section 3.5 (sine and cosine interleaved, any length) or a
  learned table of `max_len` positions (the paper's Table 3 row (E)), which refuses longer inputs.
- Dropout 0.1 on the sums of embeddings and positions and on every sub-layer's output before the
  residual addition (section 5.4); `attn_dropout` on attention probabilities is 0 unless asked.
- Post-norm (the paper) or pre-norm (`norm_first=True`); `final_norm` (default: `norm_first`) adds
  the stacks' last LayerNorm. LayerNorm eps 1e-5, as `torch.nn.Transformer` (the paper gives none).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers.position import sinusoidal_1d
from vitlab.registry import Preprocess, register_model
from vitlab.seq2seq.base import EXAMPLE_LENGTH, PAD, Memory, Seq2SeqModel, check_padding, check_tokens
from vitlab.seq2seq.layers import EncoderDecoder

POSITIONS = ("sinusoidal", "learned")


class PositionalEncoding(nn.Module):
    """Positions `offset .. offset + length - 1` as (length, dim): fixed sinusoids or a learned table (`weight`)."""

    def __init__(self, kind: str, dim: int, max_len: int, name: str):
        super().__init__()
        if kind not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {kind!r}")
        self.kind, self.dim, self.max_len, self.name = kind, dim, max_len, name
        if kind == "learned":
            self.weight = nn.Parameter(torch.empty(max_len, dim))
            nn.init.normal_(self.weight, std=dim**-0.5)
        else:
            self.register_buffer("table", sinusoidal_1d(max_len, dim), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        end = offset + length
        if self.kind == "learned":
            if end > self.max_len:
                raise ValueError(
                    f"{self.name} of length {end} is longer than the learned position table ({self.max_len} "
                    f"positions): pass max_len >= {end} when building the model, or use sinusoidal positions"
                )
            return F.embedding(torch.arange(offset, end, device=self.weight.device), self.weight)  # not a view
        table = self.table if end <= self.max_len else sinusoidal_1d(end, self.dim).to(self.table.device)
        # Gathered, not sliced: a slice bound goes through int(), so an exported graph would hold the traced length.
        return table.index_select(0, torch.arange(offset, end, device=table.device))


class TokenEmbedding(nn.Module):
    """Token embedding times sqrt(d_model), plus positions, then dropout (sections 3.4, 3.5, 5.4)."""

    def __init__(self, vocab_size: int, dim: int, dropout: float, positions: PositionalEncoding):
        super().__init__()
        self.vocab_size, self.scale = vocab_size, math.sqrt(dim)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.pos = positions
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        x = self.embed(tokens) * self.scale + self.pos(tokens.shape[1], offset).to(self.embed.weight.dtype)
        return self.drop(x)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform for every matrix of `module` (what torch.nn.Transformer does)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class TransformerSeq2Seq(Seq2SeqModel):
    """The encoder-decoder Transformer over token ids (Figure 1)."""

    def __init__(
        self,
        src_vocab_size: int = 37000,
        tgt_vocab_size: int | None = None,
        d_model: int = 512,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        norm_first: bool = False,
        final_norm: bool | None = None,
        positions: str = "sinusoidal",
        max_len: int = 1024,
        share_embeddings: bool = True,
        tie_output: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        tgt_vocab_size = tgt_vocab_size or src_vocab_size
        if share_embeddings and tgt_vocab_size != src_vocab_size:
            raise ValueError(
                f"share_embeddings needs one vocabulary; got {src_vocab_size} source and {tgt_vocab_size} target tokens"
            )
        self.src_vocab_size, self.tgt_vocab_size, self.d_model = src_vocab_size, tgt_vocab_size, d_model
        self.max_target_len = max_len if positions == "learned" else None
        self.max_source_len = self.max_target_len
        self.transformer = EncoderDecoder(
            d_model, num_heads, num_encoder_layers, num_decoder_layers, ffn_dim, dropout, attn_dropout, norm_first,
            final_norm, norm_eps,
        )  # fmt: skip
        xavier_init(self.transformer)
        self.src_embed = TokenEmbedding(
            src_vocab_size, d_model, dropout, PositionalEncoding(positions, d_model, max_len, "source")
        )
        self.tgt_embed = TokenEmbedding(
            tgt_vocab_size, d_model, dropout, PositionalEncoding(positions, d_model, max_len, "target")
        )
        if share_embeddings:
            self.tgt_embed.embed = self.src_embed.embed
        self.generator = nn.Linear(d_model, tgt_vocab_size, bias=False)
        if tie_output:
            self.generator.weight = self.tgt_embed.embed.weight
        else:
            nn.init.normal_(self.generator.weight, std=d_model**-0.5)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.transformer.encoder.grad_checkpointing = enable
        self.transformer.decoder.grad_checkpointing = enable

    def encode(self, src: Tensor, src_padding: Tensor | None = None) -> Memory:
        check_tokens(src, self.src_vocab_size, "src")
        check_padding(src_padding, src, "src_padding")
        states = self.transformer.encoder(self.src_embed(src), src_padding)
        return Memory(states, src_padding)

    def decode(
        self, tgt: Tensor, memory: Memory, cache: dict[str, Any] | None = None, tgt_padding: Tensor | None = None
    ) -> Tensor:
        check_tokens(tgt, self.tgt_vocab_size, "tgt")
        check_padding(tgt_padding, tgt, "tgt_padding")
        if tgt.shape[0] != memory.states.shape[0]:  # not len(): a Python int would fix the batch in torch.export
            raise ValueError(f"tgt has {tgt.shape[0]} sequences, the encoded source {memory.states.shape[0]}")
        if tgt_padding is not None and cache is not None:
            raise ValueError("tgt_padding is for teacher forcing; decoding with a cache takes no padding")
        offset = cache["length"] if cache is not None else 0
        x = self.tgt_embed(tgt, offset)
        state = cache.setdefault("layers", {}) if cache is not None else None
        x = self.transformer.decoder(x, memory.states, memory.padding, tgt_padding, state)
        if cache is not None:
            cache["length"] = offset + tgt.shape[1]
        return self.generator(x)

    def forward(self, src: Tensor, tgt: Tensor, src_padding: Tensor | None = None,
                tgt_padding: Tensor | None = None) -> Tensor:  # fmt: skip
        return self.decode(tgt, self.encode(src, src_padding), tgt_padding=tgt_padding)

    def block_order(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        stacks = [f"transformer.encoder.layers.{i}." for i in range(len(self.transformer.encoder.layers))]
        stacks += [f"transformer.decoder.layers.{i}." for i in range(len(self.transformer.decoder.layers))]
        groups = [[n for n in names if n.startswith(("src_embed.", "tgt_embed."))]]
        groups += [[n for n in names if n.startswith(prefix)] for prefix in stacks]
        placed = {n for g in groups for n in g}
        return [*groups, [n for n in names if n not in placed]]


TRANSFORMER = "Transformer: Vaswani et al. 2017, Attention Is All You Need (Table 3)"
TOKENS = Preprocess(input_size=(1, EXAMPLE_LENGTH, EXAMPLE_LENGTH), mean=(0.0,), std=(1.0,), crop_pct=1.0)
_TINY = dict(src_vocab_size=11, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, ffn_dim=32)
VOCABULARY = 37000  # the paper's shared English-German BPE vocabulary (section 5.1)

register_model(
    "transformer_base", TransformerSeq2Seq, dict(src_vocab_size=VOCABULARY, d_model=512, num_heads=8, ffn_dim=2048),
    TRANSFORMER, task="sequence-to-sequence", tiny=_TINY, preprocess=TOKENS, num_classes=VOCABULARY,
    paper=dict(params_m=65.0, bleu_en_de=27.3),
)  # fmt: skip
register_model(
    "transformer_big", TransformerSeq2Seq,
    dict(src_vocab_size=VOCABULARY, d_model=1024, num_heads=16, ffn_dim=4096, dropout=0.3),
    TRANSFORMER, task="sequence-to-sequence", tiny=_TINY, preprocess=TOKENS, num_classes=VOCABULARY,
    paper=dict(params_m=213.0, bleu_en_de=28.4),
)  # fmt: skip
# Small enough to train on the symbolic tasks (digits, '+', specials: 14 tokens) in seconds on a CPU.
register_model(
    "transformer_small", TransformerSeq2Seq,
    dict(src_vocab_size=14, d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=128,
         norm_first=True, dropout=0.0),
    TRANSFORMER, task="sequence-to-sequence", tiny=_TINY, preprocess=TOKENS, num_classes=14,
)  # fmt: skip
