"""Decoding: beam search against an exhaustive search, greedy as beam 1, the key/value cache giving
exactly what re-running the prefix gives, and the inputs decoding refuses."""

import itertools

import pytest
import torch

from vitlab.seq2seq.base import BOS, EOS, PAD, length_penalty
from vitlab.seq2seq.decoding import beam_search, greedy_decode
from vitlab.seq2seq.image import ImageToSequence
from vitlab.seq2seq.rnn import RecurrentSeq2Seq
from vitlab.seq2seq.transformer import TransformerSeq2Seq


def transformer(vocab: int = 5, seed: int = 0, **kwargs) -> TransformerSeq2Seq:
    torch.manual_seed(seed)
    model = TransformerSeq2Seq(vocab, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=2,
                               ffn_dim=32, dropout=0.0, tie_output=False, **kwargs)  # fmt: skip
    with torch.no_grad():  # sharper distributions than at initialisation, so that the searches disagree,
        model.generator.weight.mul_(4.0)
        model.generator.weight[EOS] = 0.0  # and an EOS logit of 0, so that the best length varies
    return model.double().eval()


def exhaustive(model, src: torch.Tensor, alpha: float, max_len: int) -> tuple[list[int], float]:
    """Every sequence of at most max_len tokens ending with EOS, each scored from a fresh decoder run."""
    memory = model.encode(src)
    emit = [t for t in range(model.tgt_vocab_size) if t not in (PAD, BOS, EOS)]
    best = None
    for length in range(1, max_len + 1):
        for body in itertools.product(emit, repeat=length - 1):
            tokens = [*body, EOS]
            log_probs = torch.log_softmax(model.decode(torch.tensor([[BOS, *tokens[:-1]]]), memory), -1)[0]
            total = sum(log_probs[i, t].item() for i, t in enumerate(tokens))
            score = total / length_penalty(length, alpha)
            if best is None or score > best[1]:
                best = (tokens, score)
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_finds_the_exhaustive_optimum_when_the_beam_holds_every_hypothesis(alpha):
    """Vocabulary 5 (PAD, BOS, EOS, a, b), at most 3 tokens: at most 4 unfinished hypotheses live at
    once, so a beam of 5 prunes nothing and must return the exhaustive optimum."""
    lengths = set()
    for seed in range(8):
        model = transformer(seed=seed)
        src = torch.randint(3, 5, (1, 4), generator=torch.Generator().manual_seed(seed))
        tokens, score = exhaustive(model, src, alpha, max_len=3)
        best = beam_search(model, src, beam_size=5, alpha=alpha, max_len=3)[0]
        assert best.tokens == tokens
        assert best.score == pytest.approx(score, rel=1e-10)
        lengths.add(len(tokens))
    if alpha == 2.0:
        assert len(lengths) > 1  # the optimum is not always the shortest sequence


def test_a_narrow_beam_prunes_and_never_beats_the_optimum():
    worse = 0
    for seed in range(12):
        model = transformer(vocab=6, seed=seed)
        src = torch.randint(3, 6, (1, 4), generator=torch.Generator().manual_seed(seed))
        _, optimum = exhaustive(model, src, 2.0, max_len=4)
        narrow = beam_search(model, src, beam_size=1, alpha=2.0, max_len=4)[0]
        wide = beam_search(model, src, beam_size=6, alpha=2.0, max_len=4)[0]
        assert narrow.score <= optimum + 1e-12 and wide.score <= optimum + 1e-12
        worse += narrow.score < optimum - 1e-9
    assert worse  # the test models are varied enough that pruning loses sometimes


def test_beam_of_one_without_length_penalty_is_greedy():
    model = transformer(vocab=9, seed=3)
    src = torch.randint(3, 9, (4, 6), generator=torch.Generator().manual_seed(0))
    greedy = greedy_decode(model, src, max_len=7)
    for i in range(4):
        beam = beam_search(model, src[i : i + 1], beam_size=1, alpha=0.0, max_len=7)[0]
        row = greedy[i].tolist()
        expected = row[: row.index(EOS) + 1] if EOS in row else row
        if EOS in expected:
            assert beam.tokens == expected


def cached_models():
    torch.manual_seed(0)
    yield "post-norm", transformer(vocab=9, seed=1), torch.randint(3, 9, (3, 6))
    yield "pre-norm", transformer(vocab=9, seed=2, norm_first=True), torch.randint(3, 9, (3, 6))
    yield "learned", transformer(vocab=9, seed=4, positions="learned", max_len=12), torch.randint(3, 9, (3, 6))
    image = ImageToSequence(num_classes=6, img_size=8, max_images=4, patch_size=4, embed_dim=16, depth=1,
                            num_heads=2, decoder_layers=2, decoder_heads=2, ffn_dim=32, dropout=0.0)  # fmt: skip
    yield "image", image.double().eval(), torch.randn(3, 1, 8, 32, dtype=torch.float64)
    for cell, attention in itertools.product(("gru", "lstm"), ("bahdanau", "luong")):
        rnn = RecurrentSeq2Seq(9, cell=cell, attention=attention, embed_dim=8, hidden_size=12).double().eval()
        yield f"{cell}-{attention}", rnn, torch.randint(3, 9, (3, 6))


@pytest.mark.parametrize("name, model, src", list(cached_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_cached_decoder_gives_exactly_the_outputs_of_the_uncached_one(name, model, src):
    length = 5 if name == "image" else 7
    memory = model.encode(src)
    tgt = torch.cat([torch.full((3, 1), BOS), torch.randint(3, model.tgt_vocab_size, (3, length - 1))], dim=1)
    full = model.decode(tgt, memory)
    cache = model.new_cache()
    steps = torch.cat([model.decode(tgt[:, t : t + 1], memory, cache) for t in range(length)], dim=1)
    # Equal to float64 rounding (one-row and many-row matrix products round differently, ~1e-16); the
    # decoded tokens are identical.
    assert torch.allclose(steps, full, rtol=0, atol=1e-12), (steps - full).abs().max()
    assert torch.equal(
        greedy_decode(model, src, max_len=length), greedy_decode(model, src, max_len=length, use_cache=False)
    )
    cached = beam_search(model, src, beam_size=3, max_len=length)
    uncached = beam_search(model, src, beam_size=3, max_len=length, use_cache=False)
    assert [h.tokens for h in cached] == [h.tokens for h in uncached]


def test_greedy_output_ends_with_eos_then_padding():
    model = transformer(vocab=7, seed=5)
    out = greedy_decode(model, torch.randint(3, 7, (8, 5), generator=torch.Generator().manual_seed(1)), max_len=6)
    for row in out.tolist():
        if EOS in row:
            end = row.index(EOS)
            assert all(t == PAD for t in row[end + 1 :])
            assert all(t not in (PAD, BOS, EOS) for t in row[:end])


def test_decoding_refuses_a_beam_wider_than_the_vocabulary_and_too_long_outputs():
    model = transformer(vocab=5)
    src = torch.randint(3, 5, (1, 4))
    with pytest.raises(ValueError, match=r"beam_size 6 must be between 1 and the target vocabulary's 5 tokens"):
        beam_search(model, src, beam_size=6)
    learned = transformer(vocab=5, positions="learned", max_len=4)
    with pytest.raises(ValueError, match=r"max_len 5 needs 5 target positions; the model's table has 4"):
        greedy_decode(learned, src, max_len=5)
