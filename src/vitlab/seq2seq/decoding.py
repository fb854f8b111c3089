"""Decoding: greedy and beam search with a length penalty, with or without the key/value cache.

Both drive any `Seq2SeqModel` through `encode` and `decode`. With `use_cache=True` (the default)
each step feeds only the newest token and the model keeps what it computed for the earlier ones
(the Transformer's keys and values per layer, the RNN's state), so a step costs one position;
without it every step re-runs the whole prefix. The two give the same tokens.

Outputs are the emitted tokens (BOS left out), each sequence ending with EOS unless it ran out of
`max_len`, and padded with PAD after it. The search space of beam search is every sequence of at
most `max_len` tokens that ends with EOS (the last step may only choose EOS); finished hypotheses
are kept aside, the `beam_size` best unfinished ones continue, and the result is the finished one
with the highest log-probability / ((5 + length) / 6)^alpha (GNMT's penalty, length counting EOS;
the paper uses beam 4 and alpha 0.6, section 6.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vitlab.seq2seq.base import BOS, EOS, PAD, Memory, Seq2SeqModel, length_penalty


def reorder_cache(cache: Any, index: Tensor) -> Any:
    """Every tensor of a decoding cache with its batch dimension (the first) picked by `index`."""
    if isinstance(cache, Tensor):
        return cache.index_select(0, index)
    if isinstance(cache, dict):
        return {k: reorder_cache(v, index) for k, v in cache.items()}
    return cache


def _default_max_len(model: Seq2SeqModel, src: Tensor, max_len: int | None) -> int:
    limit = model.max_target_len  # emitting max_len tokens feeds the decoder BOS and max_len - 1 of them
    if max_len is None:
        max_len = limit if limit else 2 * src.shape[-1] + 10
    if limit is not None and max_len > limit:
        raise ValueError(f"max_len {max_len} needs {max_len} target positions; the model's table has {limit}")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    return max_len


def _next_logits(model: Seq2SeqModel, prefix: Tensor, memory: Memory, cache: dict | None) -> Tensor:
    """Log-probabilities of the next token after `prefix` (batch, length), from the cache or the whole prefix."""
    logits = model.decode(prefix[:, -1:], memory, cache) if cache is not None else model.decode(prefix, memory)
    return torch.log_softmax(logits[:, -1].double(), dim=-1)


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqModel, src: Tensor, src_padding: Tensor | None = None, max_len: int | None = None,
    use_cache: bool = True,
) -> Tensor:  # fmt: skip
    """The most probable token at every step, until EOS or `max_len` tokens: (batch, <= max_len)."""
    max_len = _default_max_len(model, src, max_len)
    memory = model.encode(src, src_padding)
    batch = len(memory.states)
    prefix = torch.full((batch, 1), BOS, dtype=torch.long, device=memory.states.device)
    done = torch.zeros(batch, dtype=torch.bool, device=prefix.device)
    cache = model.new_cache() if use_cache else None
    for _ in range(max_len):
        log_probs = _next_logits(model, prefix, memory, cache)
        log_probs[:, PAD] = log_probs[:, BOS] = float("-inf")
        token = log_probs.argmax(dim=-1).masked_fill(done, PAD)
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        done |= token == EOS
        if bool(done.all()):
            break
    return prefix[:, 1:]


@dataclass
class Hypothesis:
    tokens: list[int]  # emitted tokens, EOS last
    log_prob: float
    score: float  # log_prob / length_penalty(len(tokens))


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel, src: Tensor, src_padding: Tensor | None = None, beam_size: int = 4, alpha: float = 0.6,
    max_len: int | None = None, use_cache: bool = True,
) -> list[Hypothesis]:  # fmt: skip
    """The best finished hypothesis of each source sequence (see the module docstring)."""
    vocab = model.tgt_vocab_size
    if not 1 <= beam_size <= vocab:
        raise ValueError(f"beam_size {beam_size} must be between 1 and the target vocabulary's {vocab} tokens")
    max_len = _default_max_len(model, src, max_len)
    memory = model.encode(src, src_padding)
    return [
        _search_one(model, memory.index_select(torch.tensor([i], device=memory.states.device)), beam_size, alpha,
                    max_len, use_cache)
        for i in range(len(memory.states))
    ]  # fmt: skip


def _search_one(
    model: Seq2SeqModel, memory: Memory, beam: int, alpha: float, max_len: int, use_cache: bool
) -> Hypothesis:
    device = memory.states.device
    prefix = torch.full((1, 1), BOS, dtype=torch.long, device=device)
    scores = torch.zeros(1, dtype=torch.float64, device=device)  # log-probabilities of the live hypotheses
    cache = model.new_cache() if use_cache else None
    finished: list[Hypothesis] = []
    for step in range(1, max_len + 1):
        rows = torch.zeros(len(prefix), dtype=torch.long, device=device)
        log_probs = _next_logits(model, prefix, memory.index_select(rows), cache)
        log_probs[:, PAD] = log_probs[:, BOS] = float("-inf")
        for row in range(len(prefix)):  # every live hypothesis may finish here
            total = float(scores[row] + log_probs[row, EOS])
            tokens = [*prefix[row, 1:].tolist(), EOS]
            finished.append(Hypothesis(tokens, total, total / length_penalty(step, alpha)))
        if step == max_len:
            break
        log_probs[:, EOS] = float("-inf")
        candidates = (scores[:, None] + log_probs).flatten()
        top = candidates.topk(min(beam, int(torch.isfinite(candidates).sum())))
        origin, token = top.indices // log_probs.shape[1], top.indices % log_probs.shape[1]
        prefix = torch.cat([prefix[origin], token[:, None]], dim=1)
        scores = top.values
        if cache is not None:
            cache = reorder_cache(cache, origin)
    return max(finished, key=lambda h: h.score)
