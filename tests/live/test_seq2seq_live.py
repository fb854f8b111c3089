"""transformer_base and transformer_big against `torch.nn.Transformer` of the same size, in float32.

The stacks of the paper's two configurations, loaded from nn.Transformer state dicts (post-norm, with
its final norms; and norm_first=True), with source/target key padding and the causal mask. Prints the
measured max relative error of each comparison. Run with `make test-live` (VITLAB_LIVE=1).
"""

import pytest
import torch
from torch import nn

from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict
from vitlab.seq2seq.layers import EncoderDecoder

SIZES = {"transformer_base": (512, 8, 2048), "transformer_big": (1024, 16, 4096)}


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("name", list(SIZES))
def test_full_size_stacks_match_nn_transformer(name, norm_first):
    d, heads, ffn = SIZES[name]
    torch.manual_seed(0)
    ref = nn.Transformer(d, heads, 6, 6, ffn, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = EncoderDecoder(d, heads, 6, 6, ffn, dropout=0.0, norm_first=norm_first, final_norm=True).eval()
    assert load_state_dict(ours, ref.state_dict()) == "torch"
    src, tgt = torch.randn(2, 30, d), torch.randn(2, 25, d)
    src_pad = torch.zeros(2, 30, dtype=torch.bool)
    src_pad[1, 20:] = True
    tgt_pad = torch.zeros(2, 25, dtype=torch.bool)
    tgt_pad[0, 22:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(25)
    masks = [p.float().masked_fill(p, -torch.inf) for p in (src_pad, tgt_pad)]
    with torch.enable_grad():  # the plain path (the inference fast path zeroes padded positions)
        expected = ref(src, tgt, tgt_mask=causal, src_key_padding_mask=masks[0], tgt_key_padding_mask=masks[1],
                       memory_key_padding_mask=masks[0], tgt_is_causal=True).detach()  # fmt: skip
    with torch.no_grad():
        error = max_rel_error(ours(src, tgt, src_pad, tgt_pad), expected)
    print(f"\nPARITY {name} {'pre-norm' if norm_first else 'post-norm'} vs nn.Transformer: max rel error {error:.2e}")
    assert error < 1e-4
