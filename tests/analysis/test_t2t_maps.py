"""T2T-ViT's tokens-to-token layers recorded on request: the Performer's implicit weights and the one-head
softmax against their equations by hand, the soft splits' grids and window centres, the picture."""

import math

import numpy as np
import torch
from PIL import Image

import vitlab
from vitlab.analysis import attention_rollout, record_layers
from vitlab.analysis.draw import draw_layer
from vitlab.cli import main
from vitlab.registry import get_entry


def tiny(name, **overrides):
    torch.manual_seed(0)
    return vitlab.create_model(name, **{**get_entry(name).tiny, **overrides}).eval()


def inputs_of(module):
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    return seen


def test_performer_weights_are_the_random_feature_kernel_and_make_its_output():
    model = tiny("t2t_vit_7").double()
    layer = model.tokens_to_token.attention1
    seen = inputs_of(layer)
    x = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    recorded = record_layers(model, x, embedding=True)[0]
    assert recorded.name == "tokens_to_token.attention1" and recorded.kind == "tokens-to-token"
    k, q, v = layer.kqv(layer.norm1(seen[0])).split(layer.emb, dim=-1)
    w, m = layer.w, layer.m

    def phi(t):  # FAVOR+ positive features, one token at a time
        return torch.stack([torch.exp(w @ t[i] - t[i].dot(t[i]) / 2) / math.sqrt(m) for i in range(len(t))])

    for b in range(2):
        kernel = phi(q[b]) @ phi(k[b]).T
        expected = kernel / (kernel.sum(-1, keepdim=True) + 1e-8)
        torch.testing.assert_close(recorded.probs[b, 0], expected, rtol=1e-12, atol=1e-14)
        # the weights the output is made with: the O(N m d) path gives the same product
        torch.testing.assert_close(recorded.probs[b, 0] @ v[b], layer.linear_attention(q, k, v)[b])
    torch.testing.assert_close(recorded.probs.sum(-1), torch.ones(recorded.probs.shape[:-1], dtype=torch.float64))


def test_token_transformer_attention_is_one_head_softmax_scaled_by_the_input_width():
    model = tiny("t2t_vit_t_14").double()
    attn = model.tokens_to_token.attention2.attn
    seen = inputs_of(attn)
    x = torch.randn(1, 3, 40, 48, dtype=torch.float64)
    layers = record_layers(model, x, embedding=True)
    recorded = next(layer for layer in layers if layer.name == "tokens_to_token.attention2.attn")
    q, k, _ = attn.qkv(seen[0]).chunk(3, dim=-1)
    expected = torch.softmax(q[0] @ k[0].T / math.sqrt(seen[0].shape[-1]), dim=-1)
    torch.testing.assert_close(recorded.probs[0, 0], expected, rtol=1e-12, atol=1e-14)


def test_soft_split_grids_and_window_centres():
    model = tiny("t2t_vit_7")
    x = torch.randn(1, 3, 64, 80)
    layers = record_layers(model, x, embedding=True)
    assert [layer.kind for layer in layers] == ["tokens-to-token", "tokens-to-token", "global", "global"]
    first, second = layers[0].keys, layers[1].keys
    # (7, 4, 2): (64 + 4 - 7) // 4 + 1 = 16 rows, 20 columns; window i covers pixels 4i - 2 .. 4i + 4
    assert first.grid == (16, 20) and layers[0].probs.shape == (1, 1, 320, 320)
    centres = first.positions((64, 80))[0, 0]
    torch.testing.assert_close(centres[0], torch.tensor([1.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(centres[21], torch.tensor([5.5, 5.5], dtype=torch.float64))  # row 1, column 1
    # (3, 2, 1) on that grid: 8 x 10; window j covers tokens 2j - 1 .. 2j + 1, centred on token 2j: 8j + 1.5 px
    assert second.grid == (8, 10)
    centres = second.positions((64, 80))[0, 0]
    torch.testing.assert_close(centres[10 + 3], torch.tensor([3 * 8 + 1.5, 8 + 1.5], dtype=torch.float64))
    assert layers[2].keys.grid == (4, 5)


def test_recording_changes_nothing_and_leaves_capture_and_rollout_to_the_blocks():
    model = tiny("t2t_vit_7")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    record_layers(model, x, embedding=True)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert model.tokens_to_token.attention1.attention_store is None
    assert [layer.name for layer in record_layers(model, x)] == ["blocks.0.attn", "blocks.1.attn"]
    assert attention_rollout(model, x).shape == (2, 4, 4)


def test_the_picture_and_the_command(tmp_path, capsys):
    model = tiny("t2t_vit_t_14")
    layer = record_layers(model, torch.randn(1, 3, 64, 64), embedding=True)[0]
    path = draw_layer(layer, tmp_path / "t2t.png", None, query=(30.0, 20.0))
    assert np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).std() > 10
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    args = ["--threads", "1", "attention", "--model", "t2t_vit_7", "--tiny", str(picture), "--img-size", "64"]
    assert main([*args, "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "tokens_to_token.attention1  tokens-to-token" in lines[0] and "grid (16, 16)" in lines[0]
    assert main([*args, "--layer", "1", "--output", str(tmp_path / "second.png")]) == 0
    assert "tokens_to_token.attention2 (tokens-to-token, 1 heads)" in capsys.readouterr().out
