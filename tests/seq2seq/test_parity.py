"""vitlab's Transformer against PyTorch's own: `torch.nn.Transformer` state dicts load (post-norm and
norm_first=True) and give the same outputs for the same masks; `nn.MultiheadAttention` against vitlab's
attention layer with key-padding and causal masks. Float64, max relative error below 1e-8."""

import pytest
import torch
from torch import nn

from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.layers.attention import capture_attention
from vitlab.seq2seq.layers import EncoderDecoder, EncoderDecoderAttention
from vitlab.seq2seq.transformer import TransformerSeq2Seq

TOLERANCE = 1e-8


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def padding_masks() -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.zeros(3, 7, dtype=torch.bool)
    src[1, 5:] = True
    src[2, 2:] = True
    tgt = torch.zeros(3, 6, dtype=torch.bool)
    tgt[0, 4:] = True
    tgt[2, 1:] = True
    return src, tgt


def reference_transformer(norm_first: bool) -> nn.Transformer:
    torch.manual_seed(1)
    ref = nn.Transformer(d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=24,
                         dropout=0.0, batch_first=True, norm_first=norm_first).double()  # fmt: skip
    for p in ref.parameters():  # biases and norms away from their initial 0 and 1, so that a swap shows
        nn.init.normal_(p, std=0.3) if p.dim() == 1 else None
    return ref


def run_reference(ref: nn.Transformer, src, tgt, src_pad, tgt_pad) -> torch.Tensor:
    causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=torch.float64)
    # Gradients on: the reference takes its plain path (its inference fast path zeroes padded positions).
    src_mask, tgt_mask = (p.double().masked_fill(p, -torch.inf) for p in (src_pad, tgt_pad))  # as float masks
    with torch.enable_grad():
        out = ref(src, tgt, tgt_mask=causal, src_key_padding_mask=src_mask, tgt_key_padding_mask=tgt_mask,
                  memory_key_padding_mask=src_mask, tgt_is_causal=True)  # fmt: skip
    return out.detach()


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_nn_transformer_state_dict_gives_the_same_outputs(norm_first):
    ref = reference_transformer(norm_first)
    ours = EncoderDecoder(16, 4, 2, 3, 24, dropout=0.0, norm_first=norm_first, final_norm=True).double().eval()
    assert load_state_dict(ours, ref.state_dict()) == "torch"  # the converter is found by the key names
    src, tgt = torch.randn(3, 7, 16, dtype=torch.float64), torch.randn(3, 6, 16, dtype=torch.float64)
    src_pad, tgt_pad = padding_masks()
    expected = run_reference(ref, src, tgt, src_pad, tgt_pad)
    assert rel_error(ours(src, tgt, src_pad, tgt_pad), expected) < TOLERANCE
    # and the masks matter: without them the outputs differ
    assert rel_error(ours(src, tgt), expected) > 1e-3


def test_a_model_that_holds_an_nn_transformer_loads_into_the_token_model():
    """The usual PyTorch translation model (`self.transformer = nn.Transformer(...)` plus embeddings)."""
    ref = reference_transformer(norm_first=True)
    model = TransformerSeq2Seq(20, d_model=16, num_heads=4, num_encoder_layers=2, num_decoder_layers=3, ffn_dim=24,
                               dropout=0.0, norm_first=True).double().eval()  # fmt: skip
    state = {f"transformer.{k}": v for k, v in ref.state_dict().items()}
    state.update({k: v for k, v in model.state_dict().items() if not k.startswith("transformer.")})
    assert load_state_dict(model, state) == "torch"
    src = torch.randint(3, 20, (3, 7))
    tgt = torch.randint(3, 20, (3, 6))
    src_pad, tgt_pad = padding_masks()
    src_x, tgt_x = model.src_embed(src), model.tgt_embed(tgt)
    expected = run_reference(ref, src_x, tgt_x, src_pad, tgt_pad) @ model.generator.weight.T
    assert rel_error(model(src, tgt, src_pad, tgt_pad), expected) < TOLERANCE


def test_a_post_norm_model_without_final_norms_refuses_nn_transformer_naming_the_keys():
    ref = reference_transformer(norm_first=False)
    ours = EncoderDecoder(16, 4, 2, 3, 24, dropout=0.0).double()  # the paper's post-norm: no final norms
    with pytest.raises(CheckpointError, match=r"unexpected keys \(4\): encoder.norm.weight"):
        load_state_dict(ours, ref.state_dict())
    other = EncoderDecoder(16, 4, 2, 2, 24, dropout=0.0, final_norm=True).double()  # another depth
    with pytest.raises(CheckpointError, match=r"unexpected keys .*decoder.layers.2"):
        load_state_dict(other, ref.state_dict())


def attention_pair(seed: int = 0) -> tuple[nn.MultiheadAttention, EncoderDecoderAttention]:
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(16, 4, batch_first=True).double()
    nn.init.normal_(ref.in_proj_bias, std=0.3)
    nn.init.normal_(ref.out_proj.bias, std=0.3)
    ours = EncoderDecoderAttention(16, 4).double()
    w, b = ref.in_proj_weight.detach(), ref.in_proj_bias.detach()
    out_w, out_b = ref.out_proj.weight.detach(), ref.out_proj.bias.detach()
    ours.load_state_dict({"q.weight": w[:16], "q.bias": b[:16], "kv.weight": w[16:], "kv.bias": b[16:],
                          "proj.weight": out_w, "proj.bias": out_b})  # fmt: skip
    return ref, ours


@pytest.mark.parametrize("causal", [False, True], ids=["padding", "padding+causal"])
def test_multihead_attention_self_attention_with_masks(causal):
    ref, ours = attention_pair()
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True
    padding[2, 3:] = True
    attn_mask = torch.ones(6, 6, dtype=torch.bool).triu(1) if causal else None  # nn: True = may not attend
    with torch.enable_grad():
        expected, weights = ref(x, x, x, key_padding_mask=padding, attn_mask=attn_mask, need_weights=True,
                                average_attn_weights=False)  # fmt: skip
    with capture_attention(ours) as maps:
        out = ours(x, padding=padding, causal=causal)
    assert rel_error(out, expected.detach()) < TOLERANCE
    assert rel_error(maps[""][0], weights.detach()) < TOLERANCE


def test_multihead_attention_cross_attention_with_key_padding():
    ref, ours = attention_pair(1)
    x, memory = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 9, 16, dtype=torch.float64)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[0, 6:] = True
    with torch.enable_grad():
        expected, _ = ref(x, memory, memory, key_padding_mask=padding)
    assert rel_error(ours(x, memory, padding), expected.detach()) < TOLERANCE
