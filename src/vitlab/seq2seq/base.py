"""The contract every sequence-to-sequence model keeps, the masks, the loss and the schedule.

A model reads a source (token ids, or an image for image-to-sequence) into a `Memory` with
`encode`, and `decode` turns target tokens into next-token logits given that memory. With a
`cache` (from `new_cache()`), `decode` is given only the tokens that are new since the last call
and keeps what it needs of the earlier ones (the Transformer's keys and values, the RNN's state),
so a decoding step costs one position, not a re-run of the prefix. `vitlab.seq2seq.decoding`
drives every model through these two calls.

Token ids 0, 1, 2 are padding, beginning and end of sequence in every vocabulary vitlab builds.
Padding masks follow `torch.nn.Transformer`: a bool (batch, length) tensor, True where a
position is padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.models.base import SavesPretrained

PAD, BOS, EOS = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
EXAMPLE_LENGTH = 32  # source and target tokens of the sentence pair MACs are counted on (a WMT sentence is ~30)


@dataclass
class Memory:
    """What the encoder hands the decoder: `states` (batch, source length, dim), `padding` (batch,
    source length; True at padding) or None, and for recurrent models the encoder's summary `final`."""

    states: Tensor
    padding: Tensor | None = None
    final: Tensor | None = None

    def index_select(self, index: Tensor) -> Memory:
        """The memory of the batch items `index` (beam search repeats and reorders items)."""
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return Memory(pick(self.states), pick(self.padding), pick(self.final))


def causal_mask(length: int, device: torch.device | None = None, offset: int = 0) -> Tensor:
    """Bool (length, offset + length): query i (at position offset + i) may attend to keys 0..offset + i.

    Section 3.2.3: "We need to prevent leftward information flow in the decoder"; no position
    attends to a later one.
    """
    queries = torch.arange(length, device=device).unsqueeze(1) + offset
    keys = torch.arange(offset + length, device=device).unsqueeze(0)
    return keys <= queries


def attention_mask(
    padding: Tensor | None, queries: int, causal_offset: int | None = None, device: torch.device | None = None
) -> Tensor | None:
    """The bool mask `attend()` takes (True: may attend), (batch or 1, 1, queries, keys), from a key
    padding mask (True at padding) and, when `causal_offset` is given, the causal mask."""
    mask = None
    if causal_offset is not None:
        mask = causal_mask(queries, device, causal_offset)[None, None]
    if padding is not None:
        keep = ~padding[:, None, None, :]
        mask = keep if mask is None else mask & keep
    return mask


def check_tokens(tokens: Tensor, vocab_size: int, name: str) -> None:
    """Token ids as (batch, length) integers within the vocabulary, else a ValueError naming `name`.

    The range check reads the values, so it is skipped while torch.compile or torch.export traces
    (a data-dependent branch would break the graph); the embedding lookup still refuses bad ids there.
    """
    if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must be integer token ids of shape (batch, length), got {tokens.dtype} "
                         f"{tuple(tokens.shape)}")  # fmt: skip
    if tokens.shape[1] == 0:
        raise ValueError(f"{name} is empty (length 0): it needs at least one token")
    if tokens.device.type != "meta" and tokens.numel() and not torch.compiler.is_compiling():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} holds token id {bad}, outside the vocabulary of {vocab_size} (ids 0..{vocab_size - 1})"
            )


def check_padding(padding: Tensor | None, tokens: Tensor, name: str) -> None:
    """A padding mask must be bool, of the tokens' (batch, length), and leave every sequence a token."""
    if padding is None:
        return
    if padding.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool mask (True at padding), got {padding.dtype}")
    if tuple(padding.shape) != tuple(tokens.shape[:2]):
        raise ValueError(f"{name} has shape {tuple(padding.shape)}, the sequences it masks {tuple(tokens.shape[:2])}")
    if padding.device.type != "meta" and not torch.compiler.is_compiling() and bool(padding.all(dim=1).any()):
        item = int(padding.all(dim=1).nonzero()[0])
        raise ValueError(f"{name} masks every position of sequence {item}: nothing is left to attend to")


class Seq2SeqModel(SavesPretrained, nn.Module):
    """Base of every encoder-decoder: the decoding interface and what tools ask of a model."""

    task: ClassVar[str] = "sequence-to-sequence"
    tgt_vocab_size: int
    max_target_len: int | None = None  # the longest target a learned position table takes

    def encode(self, src: Tensor, src_padding: Tensor | None = None) -> Memory:
        raise NotImplementedError

    def decode(self, tgt: Tensor, memory: Memory, cache: dict[str, Any] | None = None) -> Tensor:
        """Logits (batch, new positions, tgt_vocab_size) for `tgt`; with a cache, `tgt` is only the new tokens."""
        raise NotImplementedError

    def new_cache(self) -> dict[str, Any]:
        return {"length": 0}

    def forward(self, src: Tensor, tgt: Tensor, src_padding: Tensor | None = None) -> Tensor:
        """Teacher-forced logits: `tgt` is the decoder's input (BOS, y1, ..., y_{n-1})."""
        return self.decode(tgt, self.encode(src, src_padding))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def block_order(self) -> list[list[str]]:
        """Parameter names by depth (every parameter once), for layer-wise learning-rate decay."""
        return [[name for name, _ in self.named_parameters()]]

    def no_weight_decay(self) -> set[str]:
        return set()

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        """Inputs of one forward pass at the model's nominal sizes (parameters and MACs are counted on them):
        for token models, `EXAMPLE_LENGTH` source and target tokens."""
        device = next(self.parameters()).device
        _, src_len, tgt_len = self.example_size
        return (torch.full((batch, src_len), 3, dtype=torch.long, device=device),
                torch.full((batch, tgt_len), 3, dtype=torch.long, device=device))  # fmt: skip

    @property
    def example_size(self) -> tuple[int, ...]:
        """The sizes `example_inputs` uses, as `model_info` reports them: (1, source length, target
        length) for token models, the image's (channels, height, width) for image-to-sequence."""
        return (1, EXAMPLE_LENGTH, EXAMPLE_LENGTH)


def label_smoothed_loss(logits: Tensor, targets: Tensor, smoothing: float = 0.1, ignore_index: int = PAD) -> Tensor:
    """Cross-entropy against targets smoothed by `smoothing` (section 5.4, eps_ls = 0.1), averaged over
    the positions that are not `ignore_index`: the true token gets 1 - eps, the others eps / (V - 1)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    log_probs = F.log_softmax(logits, dim=-1)
    keep = targets != ignore_index
    nll = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    vocab = logits.shape[-1]
    uniform = -(log_probs.sum(dim=-1) - log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1))
    loss = (1.0 - smoothing) * nll + smoothing / (vocab - 1) * uniform
    return (loss * keep).sum() / keep.sum().clamp(min=1)


def transformer_lr(step: int, d_model: int, warmup: int = 4000) -> float:
    """Section 5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step counted from 1."""
    step = max(step, 1)
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT's length penalty ((5 + |Y|) / 6)^alpha (Wu et al. 2016, eq. 14); the paper's alpha is 0.6."""
    if isinstance(length, Tensor):
        return ((5.0 + length.double()) / 6.0) ** alpha
    return math.pow((5.0 + length) / 6.0, alpha)
