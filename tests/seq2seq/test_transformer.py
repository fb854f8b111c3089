"""The Transformer as the paper specifies it: masks, embeddings, positions, sizes, loss, schedule, input errors."""

import math

import pytest
import torch

from vitlab import capture_attention, create_model, model_info
from vitlab.seq2seq.base import BOS, PAD, label_smoothed_loss, transformer_lr
from vitlab.seq2seq.transformer import TransformerSeq2Seq


def tiny(**kwargs) -> TransformerSeq2Seq:
    torch.manual_seed(0)
    args = dict(src_vocab_size=12, d_model=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=32,
                dropout=0.0)  # fmt: skip
    return TransformerSeq2Seq(**{**args, **kwargs}).double().eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_no_target_position_sees_a_later_one(norm_first):
    model = tiny(norm_first=norm_first)
    src, tgt = torch.randint(3, 12, (2, 5)), torch.randint(3, 12, (2, 6))
    with capture_attention(model) as maps:
        logits = model(src, tgt)
    for name in ("transformer.decoder.layers.0.self_attn", "transformer.decoder.layers.1.self_attn"):
        probs = maps[name][0]
        assert torch.all(probs.triu(1) == 0), name
        assert torch.allclose(probs.sum(-1), torch.ones((), dtype=probs.dtype))
    changed = tgt.clone()
    changed[:, 3:] = torch.randint(3, 12, (2, 3))
    again = model(src, changed)
    assert torch.equal(again[:, :3], logits[:, :3])  # earlier positions cannot tell
    assert not torch.allclose(again[:, 3:], logits[:, 3:])


def test_padded_source_positions_get_zero_probability_and_change_nothing():
    model = tiny()
    src, tgt = torch.randint(3, 12, (2, 6)), torch.randint(3, 12, (2, 4))
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 4:] = True
    with capture_attention(model) as maps:
        logits = model(src, tgt, padding)
    for name, probs in maps.items():
        if "encoder" in name or "cross_attn" in name:
            assert torch.all(probs[0][0, :, :, 4:] == 0), name
            assert torch.all(probs[0][1] > 0), name
    other = src.clone()
    other[0, 4:] = torch.randint(3, 12, (2,))
    assert torch.equal(model(other, tgt, padding), logits)


def test_sinusoids_interleave_as_the_paper_writes_them():
    model = tiny(d_model=8, num_heads=2)
    table = model.src_embed.pos(10)
    for pos in range(10):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert math.isclose(table[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_embeddings_are_scaled_by_sqrt_d_model_and_shared_with_the_output():
    model = tiny()
    tokens = torch.tensor([[BOS, 5, 7]])
    weight = model.src_embed.embed.weight
    expected = weight[tokens] * math.sqrt(16) + model.src_embed.pos(3)
    assert torch.allclose(model.src_embed(tokens), expected)
    assert model.tgt_embed.embed.weight is weight and model.generator.weight is weight
    untied = tiny(share_embeddings=False, tie_output=False, tgt_vocab_size=9)
    assert untied.generator.weight is not untied.tgt_embed.embed.weight
    assert untied.generator.weight.shape == (9, 16)


@pytest.mark.parametrize(
    "name, params, paper",
    [("transformer_base", 63_082_496, 65e6), ("transformer_big", 214_245_376, 213e6)],
)
def test_parameter_counts_with_the_shared_37000_token_vocabulary(name, params, paper):
    """Table 3 rounds to 65M and 213M; counted exactly: 37,000 x d_model shared embedding and output,
    6 + 6 layers, no output bias, no final norms (post-norm)."""
    info = model_info(name)
    assert info["params"] == params
    d, ff = (512, 2048) if name == "transformer_base" else (1024, 4096)
    attention, ffn, norm = 4 * d * d + 4 * d, 2 * d * ff + ff + d, 2 * d
    assert params == 37000 * d + 6 * (attention + ffn + 2 * norm) + 6 * (2 * attention + ffn + 3 * norm)
    assert abs(params - paper) / paper < 0.03
    assert round(params / 1e6, 2) == {"transformer_base": 63.08, "transformer_big": 214.25}[name]


def test_warmup_schedule_of_section_5_3():
    d, warmup = 512, 4000
    assert transformer_lr(1, d, warmup) == pytest.approx(d**-0.5 * warmup**-1.5)
    assert transformer_lr(warmup, d, warmup) == pytest.approx(d**-0.5 * warmup**-0.5)  # the peak
    assert transformer_lr(4 * warmup, d, warmup) == pytest.approx(transformer_lr(warmup, d, warmup) / 2)
    assert transformer_lr(2000, d, warmup) == pytest.approx(transformer_lr(warmup, d, warmup) / 2)


def test_label_smoothed_loss_against_the_smoothed_distribution():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, dtype=torch.float64)
    targets = torch.tensor([[4, 5, PAD], [3, PAD, PAD]])
    total, count = 0.0, 0
    for b in range(2):
        for t in range(3):
            if targets[b, t] == PAD:
                continue
            q = torch.full((6,), 0.1 / 5, dtype=torch.float64)
            q[targets[b, t]] = 0.9
            total += -(q * logits[b, t].log_softmax(-1)).sum().item()
            count += 1
    assert label_smoothed_loss(logits, targets, 0.1).item() == pytest.approx(total / count)


def test_bad_input_errors_name_the_tensor_and_sizes():
    model = tiny(positions="learned", max_len=6)
    src, tgt = torch.randint(3, 12, (2, 5)), torch.randint(3, 12, (2, 4))
    with pytest.raises(ValueError, match=r"src holds token id 12, outside the vocabulary of 12"):
        model(torch.full((2, 5), 12), tgt)
    with pytest.raises(ValueError, match=r"tgt holds token id -1"):
        model(src, torch.full((2, 4), -1))
    with pytest.raises(ValueError, match=r"target of length 7 is longer than the learned position table \(6"):
        model(src, torch.randint(3, 12, (2, 7)))
    with pytest.raises(ValueError, match=r"source of length 8 is longer"):
        model(torch.randint(3, 12, (2, 8)), tgt)
    with pytest.raises(ValueError, match=r"tgt is empty \(length 0\)"):
        model(src, torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"src_padding has shape \(2, 4\), the sequences it masks \(2, 5\)"):
        model(src, tgt, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"tgt_padding has shape \(1, 4\)"):
        model(src, tgt, None, torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"src_padding must be a bool mask"):
        model(src, tgt, torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"src_padding masks every position of sequence 1"):
        model(src, tgt, torch.tensor([[False] * 5, [True] * 5]))
    with pytest.raises(ValueError, match=r"tgt has 3 sequences, the encoded source 2"):
        model(src, torch.randint(3, 12, (3, 4)))
    with pytest.raises(ValueError, match=r"src must be integer token ids"):
        model(torch.randn(2, 5), tgt)


def test_named_variants_build_with_the_paper_settings():
    base = model_info("transformer_base")
    assert base["input_size"] == (1, 32, 32) and base["gmacs"] > 0
    model = create_model("transformer_small")
    assert model.tgt_vocab_size == 14
