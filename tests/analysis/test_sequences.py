"""`vitlab attention` on sequence models: the decoder's cross-attention against softmax(q k^T / sqrt(d)) by hand."""

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.analysis.sequences import token_cross_attention
from vitlab.cli import main
from vitlab.registry import get_entry
from vitlab.seq2seq.predict import cross_attention, read_strip, select_attention


def tiny(name, **overrides):
    torch.manual_seed(0)
    return vitlab.create_model(name, **{**get_entry(name).tiny, **overrides}).eval()


def inputs_of(model, kind):
    """What every module of type `kind` was called with, in order (a forward pre-hook)."""
    seen = []
    for module in model.modules():
        if isinstance(module, kind):
            module.register_forward_pre_hook(lambda m, args, kwargs: seen.append((m, args, kwargs)), with_kwargs=True)
    return seen


def by_hand(attn, x, source):
    """Eq. 1 of Vaswani et al. per head: softmax(x W_q (source W_k)^T / sqrt(d_k)), (batch, heads, n, m)."""
    q = attn.q(x).unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)
    k = attn.kv(source).chunk(2, dim=-1)[0].unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim**0.5, dim=-1)


def test_transformer_cross_attention_is_each_output_token_over_the_source():
    from vitlab.seq2seq.layers import EncoderDecoderAttention

    model = tiny("transformer_small", num_decoder_layers=2).double()
    seen = inputs_of(model, EncoderDecoderAttention)
    source, target = [4, 7, 9, 3, 5], [6, 8, 2]
    tokens, layers = token_cross_attention(model, source, target)
    assert tokens == target and [name for name, _ in layers] == [
        "transformer.decoder.layers.0.cross_attn",
        "transformer.decoder.layers.1.cross_attn",
    ]
    crosses = [(m, a) for m, a, _ in seen if len(a) > 1 and a[1] is not None]
    assert len(crosses) == 2
    for (_, probs), (module, args) in zip(layers, crosses, strict=True):
        assert probs.shape == (2, 3, 5)  # heads, output tokens, source tokens
        torch.testing.assert_close(probs, by_hand(module, args[0], args[1])[0], rtol=1e-12, atol=1e-12)


def test_recurrent_decoder_attends_once_per_step():
    model = tiny("gru_luong_small").double()
    seen = []
    model.attn.register_forward_pre_hook(lambda m, args: seen.append(args))
    source = [3, 4, 5, 6]
    tokens, layers = token_cross_attention(model, source, [7, 8, 9, 2])
    ((name, probs),) = layers
    assert name == "attn" and probs.shape == (1, 4, 4)
    for step, (query, keys, _memory, _padding) in enumerate(seen[-4:]):  # Luong's "general" score: h_t . W h_s
        torch.testing.assert_close(probs[0, step], torch.softmax(keys[0, 0] @ query[0], dim=-1))


def test_greedy_decoding_gives_the_target_when_none_is_given():
    model = tiny("transformer_small")
    tokens, layers = token_cross_attention(model, [4, 5, 6])
    assert tokens and layers[0][1].shape[1] == len(tokens)
    torch.testing.assert_close(layers[0][1].sum(-1), torch.ones(layers[0][1].shape[:-1]))


def test_one_layer_and_head_of_a_strip_and_their_mean():
    model = tiny("image_to_sequence_vit", decoder_layers=2)
    x = torch.randn(1, 1, 28, 84)
    tokens, mean = read_strip(model, x)
    picks = torch.stack([read_strip(model, x, layer, head)[1] for layer in (0, 1) for head in (0, 1)])
    torch.testing.assert_close(picks.mean(0), mean)
    prefix = torch.tensor([[1, *tokens[:-1]]])
    cross = cross_attention(model, x, prefix)
    assert torch.equal(read_strip(model, x, -1, 1)[1].flatten(1), cross[1][1][0, 1, :, 1:])
    with pytest.raises(ValueError, match="--head 2 is out of range"):
        select_attention(cross, 0, 2)
    with pytest.raises(ValueError, match="--layer 2 is out of range"):
        select_attention(cross, 2, None)


@pytest.fixture()
def strip(tmp_path):
    path = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 84), dtype=np.uint8)).save(path)
    return path


def not_blank(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).std() > 10


def test_the_attention_command_draws_sequence_models(strip, tmp_path, capsys):
    out = tmp_path / "cross.png"
    base = ["--threads", "1", "attention", "--tiny", "--output", str(out)]
    assert main([*base, "--model", "image_to_sequence_vit", str(strip), "--head", "1"]) == 0
    assert "decoder cross-attention ->" in capsys.readouterr().out and not_blank(out)
    out.unlink()
    assert main([*base, "--model", "transformer_small", "--source", "4,5,6,7", "--target", "8,9,2"]) == 0
    assert "output [8, 9, 2]" in capsys.readouterr().out and not_blank(out)
    assert main([*base, "--model", "lstm_bahdanau_small", "--source", "4,5,6"]) == 0
    assert "1 cross-attention layer(s) of 1 head(s)" in capsys.readouterr().out


def test_sequence_commands_that_cannot_work_say_why(strip, capsys):
    base = ["attention", "--tiny"]
    assert main([*base, "--model", "transformer_small", str(strip)]) == 2
    assert "--source IDS" in capsys.readouterr().err
    assert main([*base, "--model", "transformer_small", "--source", "4,99"]) == 2
    assert "token id 99, outside the vocabulary" in capsys.readouterr().err
    assert main([*base, "--model", "transformer_small", "--source", "4,5", "--layer", "3"]) == 2
    assert "--layer 3 is out of range" in capsys.readouterr().err
    assert main([*base, "--model", "image_to_sequence_vit"]) == 2
    assert "STRIP image file" in capsys.readouterr().err


def test_a_trained_strip_model_from_its_run_file(strip, tmp_path, capsys):
    from tests.seq2seq.test_train import TINY_STRIPS
    from vitlab.train.rundir import RunDir

    torch.manual_seed(0)
    args = {**TINY_STRIPS, "patch_size": 7, "img_size": 28, "num_classes": 10}
    model = vitlab.create_model("image_to_sequence_vit", **args)
    RunDir(tmp_path).write_weights(model.state_dict(), [f"c{i}" for i in range(10)], "image_to_sequence_vit", args)
    out = tmp_path / "cross.png"
    weights = ["--checkpoint", str(tmp_path / "model.safetensors")]
    assert main(["--threads", "1", "attention", *weights, str(strip), "--layer", "0", "--output", str(out)]) == 0
    assert "image_to_sequence_vit read: c" in capsys.readouterr().out and not_blank(out)
