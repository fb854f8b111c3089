"""T2T-ViT: counts and MACs against the official code, the official checkpoint layout (frozen `w` and
`pos_embed` loaded and used), the Performer and the T2T attention against per-token readings of their
equations, attention capture, input sizes, and the small 28x28 variant.

Parity of whole models with the official code: tests/parity/fixtures/t2t_*.safetensors.
"""

import math

import pytest
import torch

import vitlab
from vitlab.analysis import attention_rollout
from vitlab.analysis.complexity import count_params
from vitlab.checkpoint import CheckpointError, load_checkpoint, load_state_dict
from vitlab.layers.position import resize_pos_embed
from vitlab.models.t2t import TokenAttention, TokenPerformer
from vitlab.train.optim import param_groups

# Parameter counts in millions (2 decimals): the figures, which are those of the official code
# with its frozen parameters (the Performer's `w`, the sinusoidal `pos_embed`) counted, as
# references/backbones.md counts them (T2T-ViT-7: 4.310M in all, 4.256M trainable).
PARAMS = {
    "t2t_vit_7": 4.31,
    "t2t_vit_10": 5.89,
    "t2t_vit_12": 6.94,
    "t2t_vit_14": 21.55,
    "t2t_vit_19": 39.18,
    "t2t_vit_24": 64.11,
    "t2t_vit_t_14": 21.54,
    "t2t_vit_t_19": 39.17,
    "t2t_vit_t_24": 64.10,
}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_official_code(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(count_params(model) / 1e6, 2) == PARAMS[name]


def test_frozen_parameters_are_counted_and_trainable_ones_match_the_reference():
    with torch.device("meta"):
        model = vitlab.create_model("t2t_vit_7")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "tokens_to_token.attention1.w", "tokens_to_token.attention2.w"}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert round(trainable / 1e6, 3) == 4.256  # references/backbones.md, official code


def test_frozen_parameters_stay_out_of_the_optimiser_and_layer_decay_scales_the_rest_by_depth():
    model = small()
    depth_of = {n: d for d, group in enumerate(model.block_order()) for n in group}
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    last = len(model.block_order()) - 1
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert scale_of[id(param)] == 0.5 ** (last - depth_of[pname]), pname
        else:  # pos_embed and the two `w`: fixed, as in the official training
            assert id(param) not in scale_of and depth_of[pname] == 0, pname


@pytest.mark.parametrize("name, gmacs", [("t2t_vit_7", 1.15), ("t2t_vit_14", 4.78)])
def test_macs_match_the_official_code(name, gmacs):
    assert round(vitlab.model_info(name)["gmacs"], 2) == gmacs  # official code, counted here: 1.147, 4.783


def test_state_dict_has_the_official_layout():
    with torch.device("meta"):
        performer = vitlab.create_model("t2t_vit_7").state_dict()
        transformer = vitlab.create_model("t2t_vit_t_14").state_dict()
    assert (len(performer), len(transformer)) == (111, 184)  # as the official t2t_vit_7 and t2t_vit_t_14
    shapes = {
        "pos_embed": (1, 197, 256),
        "tokens_to_token.attention1.w": (32, 64),
        "tokens_to_token.attention1.kqv.weight": (192, 147),
        "tokens_to_token.attention2.kqv.weight": (192, 576),
        "tokens_to_token.attention2.mlp.2.weight": (64, 64),
        "tokens_to_token.project.weight": (256, 576),
        "blocks.6.attn.qkv.weight": (768, 256),
        "head.weight": (1000, 256),
    }
    assert {k: tuple(performer[k].shape) for k in shapes} == shapes
    assert "blocks.0.attn.qkv.bias" not in performer
    assert tuple(transformer["tokens_to_token.attention1.attn.qkv.weight"].shape) == (192, 147)
    assert "tokens_to_token.attention2.mlp.fc2.bias" in transformer and not any(k.endswith(".w") for k in transformer)


def small(name="t2t_vit_7", **kwargs):
    torch.manual_seed(0)
    config = dict(embed_dim=32, depth=2, num_heads=2, token_dim=16, num_classes=5)
    return vitlab.create_model(name, **{**config, **kwargs}).eval()


def test_position_table_is_the_fixed_sinusoid_of_the_official_code():
    model = small(img_size=64)  # 4x4 tokens and the class token
    table = model.pos_embed[0].double()
    dim = table.shape[1]
    for pos in range(table.shape[0]):  # get_sinusoid_encoding, entry by entry
        for j in range(dim):
            angle = pos / 10000 ** (2 * (j // 2) / dim)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert abs(table[pos, j].item() - expected) < 1e-6, (pos, j)
    assert table.shape[0] == 17 and not model.pos_embed.requires_grad


def test_the_checkpoints_random_features_and_position_table_are_loaded_and_used():
    model = small()
    x = torch.randn(1, 3, 64, 64)
    state = model.state_dict()
    with torch.no_grad():
        before = model(x)
        for key in ("tokens_to_token.attention2.w", "pos_embed"):
            other = small()
            load_state_dict(other, {**state, key: state[key] * 0.5})
            assert not torch.allclose(other(x), before), key  # the loaded values are what runs
    without_w = {k: v for k, v in state.items() if k != "tokens_to_token.attention1.w"}
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): tokens_to_token\.attention1\.w"):
        load_state_dict(small(), without_w)


def test_a_checkpoint_of_the_other_t2t_layer_kind_is_refused_with_the_keys_named():
    transformer_weights = small("t2t_vit_t_14").state_dict()
    with pytest.raises(CheckpointError) as err:
        load_state_dict(small("t2t_vit_14"), transformer_weights)
    message = str(err.value)
    assert "tokens_to_token.attention1.w" in message and "tokens_to_token.attention1.attn.qkv.weight" in message


def test_an_official_training_checkpoint_loads_its_ema_weights(tmp_path):
    model, ema = small(), small()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    wrap = lambda m: {f"module.{k}": v for k, v in m.state_dict().items()}  # noqa: E731 (DataParallel names)
    path = tmp_path / "81.5_T2T_ViT_14.pth.tar"
    torch.save({"epoch": 310, "state_dict": wrap(model), "state_dict_ema": wrap(ema)}, path)
    target = small()
    assert load_checkpoint(target, path, use_ema=True) == "native"
    torch.testing.assert_close(target.state_dict(), ema.state_dict(), rtol=0, atol=0)


def performer_per_token(layer: TokenPerformer, q, k, v):
    """The official kernel read one query at a time: phi(x) = exp(w x - |x|^2/2)/sqrt(m),
    y_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + 1e-8)."""

    def phi(x):
        return torch.stack([torch.exp(w_r @ x - x @ x / 2) for w_r in layer.w.double()]) / math.sqrt(layer.m)

    out = torch.zeros_like(v)
    for b in range(q.shape[0]):
        keys = [phi(k[b, j]) for j in range(k.shape[1])]
        for i in range(q.shape[1]):
            scores = torch.stack([phi(q[b, i]) @ key for key in keys])
            out[b, i] = (scores[:, None] * v[b]).sum(0) / (scores.sum() + 1e-8)
    return out


def test_performer_kernel_matches_the_per_token_equation():
    torch.manual_seed(1)
    layer = TokenPerformer(dim=12, in_dim=8).double().eval()
    q, k, v = (torch.randn(2, 9, 8, dtype=torch.float64) * 0.7 for _ in range(3))
    torch.testing.assert_close(
        layer.linear_attention(q, k, v), performer_per_token(layer, q, k, v), rtol=1e-10, atol=1e-12
    )


def test_performer_kernel_runs_in_float32_under_autocast():
    layer = TokenPerformer(dim=12, in_dim=8).eval()
    dtypes = []
    kernel = layer.linear_attention
    layer.linear_attention = lambda q, k, v: dtypes.append((out := kernel(q, k, v)).dtype) or out
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        y = layer(torch.randn(2, 9, 12))
    assert dtypes == [torch.float32] and y.dtype == torch.bfloat16  # the official code's float32 kernel


def test_t2t_attention_scales_by_the_input_width_and_keeps_the_value_as_skip():
    torch.manual_seed(2)
    layer = TokenAttention(dim=27, in_dim=8).double().eval()
    x = torch.randn(2, 5, 27, dtype=torch.float64)
    q, k, v = layer.qkv(x).split(8, dim=-1)
    expected = torch.zeros(2, 5, 8, dtype=torch.float64)
    for b in range(2):
        for i in range(5):
            weights = torch.softmax(torch.stack([q[b, i] @ k[b, j] / math.sqrt(27) for j in range(5)]), 0)
            expected[b, i] = (weights[:, None] * v[b]).sum(0)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), v + layer.proj(expected), rtol=1e-10, atol=1e-12)


def test_capture_attention_records_the_blocks_and_rollout_runs_through_them():
    for name in ("t2t_vit_7", "t2t_vit_t_14"):
        model = small(name)
        x = torch.randn(2, 3, 64, 64)
        with vitlab.capture_attention(model) as maps, torch.no_grad():
            model(x)
        assert set(maps) == {"blocks.0.attn", "blocks.1.attn"}  # not the T2T layers: other tokens
        assert maps["blocks.1.attn"][0].shape == (2, 2, 17, 17)  # 4x4 tokens and the class token, 2 heads
        assert attention_rollout(model, x).shape == (2, 4, 4)


def test_non_square_images_keep_their_token_grid():
    model = small()
    tokens, grid = model.tokens_to_token(torch.randn(1, 3, 37, 53))
    assert grid == (3, 4) and tokens.shape == (1, 12, 32)  # 37 -> 9 -> 5 -> 3, 53 -> 13 -> 7 -> 4
    features = vitlab.create_model("t2t_vit_7", features_only=True, embed_dim=32, depth=2, num_heads=2, token_dim=16)
    assert features(torch.randn(1, 3, 37, 53))[-1].shape == (1, 32, 3, 4)


def test_another_input_size_resizes_the_loaded_table_as_loading_it_for_that_size_does():
    model = small()  # built for 224: a 14x14 table
    x = torch.randn(1, 3, 288, 288)  # 18x18 tokens
    at_288 = small(img_size=288)
    load_state_dict(at_288, model.state_dict())  # the checkpoint's table resized once, by adapt_state_dict
    torch.testing.assert_close(at_288.pos_embed, resize_pos_embed(model.pos_embed, (18, 18), (14, 14)))
    with torch.no_grad():
        torch.testing.assert_close(model(x), at_288(x))


def test_too_small_images_are_refused_with_the_smallest_size():
    with pytest.raises(ValueError, match=r"at least 3x3 pixels, got 2x9"):
        small()(torch.randn(1, 3, 2, 9))


def test_mini_28_is_small_and_trains():
    torch.manual_seed(0)
    model = vitlab.create_model("t2t_vit_mini_28", in_chans=1, num_classes=10)
    assert 0.40e6 <= count_params(model) <= 0.50e6  # 0.443M
    assert model.grid_size == (7, 7) and model.pos_embed.shape == (1, 50, 96)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(15):  # memorise 16 random images
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)  # w and pos_embed stay fixed
