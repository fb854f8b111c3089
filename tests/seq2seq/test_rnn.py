"""The recurrent baselines: their attention against the papers' equations computed per position."""

import pytest
import torch

from vitlab import capture_attention
from vitlab.seq2seq.base import BOS
from vitlab.seq2seq.rnn import RecurrentSeq2Seq


def model(cell: str, attention: str) -> RecurrentSeq2Seq:
    torch.manual_seed(0)
    return RecurrentSeq2Seq(10, cell=cell, attention=attention, embed_dim=6, hidden_size=5).double().eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bahdanau_attention_is_eq_6_per_annotation(cell):
    """e_ij = v^T tanh(W s_{i-1} + U h_j), alpha_ij = softmax_j(e_ij), c_i = sum_j alpha_ij h_j."""
    m = model(cell, "bahdanau")
    src = torch.randint(3, 10, (2, 7))
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    memory = m.encode(src, padding)
    with capture_attention(m) as maps:
        m.decode(torch.full((2, 1), BOS), memory)
    probs = maps["attn"][0][:, 0, 0]  # (batch, source)
    s0 = memory.final[:, -1]  # the first step's query: the initial state
    for b in range(2):
        length = 7 - int(padding[b].sum())
        e = torch.stack([
            m.attn.scores.weight[0] @ torch.tanh(m.attn.query.weight @ s0[b] + m.attn.key(memory.states[b, j]))
            for j in range(length)
        ])  # fmt: skip
        assert torch.allclose(probs[b, :length], e.softmax(0))
        assert torch.all(probs[b, length:] == 0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_luong_general_attention_is_eq_8_with_input_feeding(cell):
    """score(h_t, h_s) = h_t^T W_a h_s over the annotations; the first step feeds h~_0 = 0."""
    m = model(cell, "luong")
    src = torch.randint(3, 10, (2, 6))
    memory = m.encode(src)
    with capture_attention(m) as maps:
        m.decode(torch.full((2, 1), BOS), memory)
    hidden = memory.final.transpose(0, 1).contiguous()
    hidden = (hidden, torch.zeros_like(hidden)) if cell == "lstm" else hidden
    step_input = torch.cat([m.tgt_embed(torch.full((2,), BOS)), torch.zeros(2, 5, dtype=torch.float64)], -1)
    h_t = m.decoder(step_input[:, None], hidden)[0][:, 0]
    for b in range(2):
        scores = torch.stack([h_t[b] @ m.attn.key.weight @ memory.states[b, j] for j in range(6)])
        assert torch.allclose(maps["attn"][0][b, 0, 0], scores.softmax(0))


def test_the_encoder_reads_right_padded_sources_only():
    m = model("gru", "bahdanau")
    src = torch.randint(3, 10, (1, 5))
    padding = torch.tensor([[True, False, False, False, False]])
    with pytest.raises(ValueError, match="right-padded"):
        m.encode(src, padding)


def test_padding_does_not_change_a_sequence_s_encoding():
    m = model("lstm", "luong")
    src = torch.randint(3, 10, (1, 4))
    padded = torch.cat([src, torch.randint(3, 10, (1, 3))], dim=1)
    padding = torch.tensor([[False] * 4 + [True] * 3])
    a, b = m.encode(src), m.encode(padded, padding)
    assert torch.allclose(a.final, b.final) and torch.allclose(a.states, b.states[:, :4])
