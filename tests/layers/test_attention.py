import math

import pytest
import torch

import vitlab
from vitlab.layers import MultiHeadAttention, attend, capture_attention, explicit_attention, record_attention
from vitlab.layers.attention import AdditiveScores, CosineScores


def naive_attention(q, k, v, bias=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if bias is not None:
        logits = logits + bias
    return torch.einsum("bhqk,bhkd->bhqd", logits.softmax(-1), v)


def qkv(b=2, h=3, n=5, m=7, d=8):
    return torch.randn(b, h, n, d), torch.randn(b, h, m, d), torch.randn(b, h, m, d)


def test_attend_is_scaled_dot_product_attention():
    q, k, v = qkv()
    torch.testing.assert_close(attend(q, k, v), naive_attention(q, k, v))
    torch.testing.assert_close(attend(q, k, v, scale=0.3), naive_attention(q, k, v, scale=0.3))


def test_attend_adds_float_bias_and_respects_bool_mask():
    q, k, v = qkv()
    bias = torch.randn(3, 5, 7)
    torch.testing.assert_close(attend(q, k, v, bias=bias), naive_attention(q, k, v, bias=bias))
    allowed = torch.rand(5, 7) > 0.3
    allowed[:, 0] = True
    expected = naive_attention(q, k, v, bias=torch.zeros(5, 7).masked_fill(~allowed, float("-inf")))
    torch.testing.assert_close(attend(q, k, v, bias=allowed), expected)


def test_explicit_path_matches_fused():
    q, k, v = qkv()
    bias = torch.randn(5, 7)
    fused = attend(q, k, v, bias=bias)
    with explicit_attention():
        torch.testing.assert_close(attend(q, k, v, bias=bias), fused)


def test_learned_bias_gets_the_exact_gradient():
    # On CPU a bias that needs a gradient takes the plain products (the fused kernels give it none).
    q, k, v = (t.double().requires_grad_() for t in qkv())
    table = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    attend(q, k, v, bias=table).square().sum().backward()
    got = [t.grad.clone() for t in (q, k, v, table)]
    for t in (q, k, v, table):
        t.grad = None
    naive_attention(q, k, v, bias=table).square().sum().backward()
    for mine, expected in zip(got, (q.grad, k.grad, v.grad, table.grad), strict=True):
        torch.testing.assert_close(mine, expected)


def test_training_takes_plain_products_only_when_queries_and_keys_are_both_short():
    from vitlab.layers.attention import _plain_products_train_faster

    def case(queries: int, keys: int) -> bool:
        q, k = torch.randn(1, 1, queries, 8, requires_grad=True), torch.randn(1, 1, keys, 8)
        return _plain_products_train_faster(q, k, None)

    assert case(49, 49)  # a 7 x 7 window
    assert not case(3136, 49)  # PVT's spatial reduction: the fused kernel keeps no probabilities
    assert not case(197, 197)
    with torch.no_grad():
        assert not case(49, 49)


def test_store_receives_probabilities_and_output_is_unchanged():
    q, k, v = qkv()
    store = []
    out = attend(q, k, v, store=store)
    assert torch.equal(out, attend(q, k, v))
    (probs,) = store
    assert probs.shape == (2, 3, 5, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 5))
    torch.testing.assert_close(probs @ v, out)


def test_record_attention_keeps_detached_probabilities_only_while_recording():
    probs = torch.rand(2, 3, 4, 4, requires_grad=True).softmax(-1)
    record_attention(None, probs)  # not recording: nothing to keep, nothing raised
    store = []
    record_attention(store, probs)
    assert len(store) == 1 and not store[0].requires_grad
    torch.testing.assert_close(store[0], probs.detach())


def test_cosine_similarity_is_temperature_times_cosine():
    scores = CosineScores(num_heads=3, init_temperature=10.0)
    q, k, v = qkv()
    q2, k2 = scores(q, k)
    logits = q2 @ k2.transpose(-2, -1)
    cosine = torch.nn.functional.cosine_similarity(q.unsqueeze(-2), k.unsqueeze(-3), dim=-1)
    torch.testing.assert_close(logits, 10.0 * cosine)
    with torch.no_grad():
        scores.logit_scale.fill_(math.log(1000.0))  # the temperature is clamped at 100
    q2, _ = scores(q, k)
    torch.testing.assert_close(q2.norm(dim=-1), torch.full((2, 3, 5), 100.0))


def test_additive_scores_follow_bahdanau():
    scores = AdditiveScores(num_heads=3, head_dim=8)
    q, k, v = qkv()
    logits = scores(q, k)
    b, h, i, j = 1, 2, 3, 4
    expected = (scores.weight[h] * torch.tanh(q[b, h, i] + k[b, h, j])).sum()
    torch.testing.assert_close(logits[b, h, i, j], expected)
    out = attend(q, k, v, score_fn=scores)
    torch.testing.assert_close(out, logits.softmax(-1) @ v)


@pytest.mark.parametrize("similarity", ["dot", "cosine", "additive"])
def test_multi_head_attention_similarities(similarity):
    layer = MultiHeadAttention(dim=24, num_heads=3, similarity=similarity).eval()
    x = torch.randn(2, 6, 24, requires_grad=True)
    with capture_attention(layer) as maps:
        y = layer(x)
    assert y.shape == x.shape
    (probs,) = maps[""]
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 6))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_unknown_similarity_and_bad_heads_are_refused():
    with pytest.raises(ValueError, match="similarity"):
        MultiHeadAttention(24, 3, similarity="euclid")
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(25, 3)


def test_capture_attention_on_a_model_keeps_outputs_identical():
    model = vitlab.create_model("deit_tiny_patch16_224", depth=3, img_size=64, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        with capture_attention(model) as maps:
            captured = model(x)
    assert torch.equal(plain, captured)
    assert sorted(maps) == [f"blocks.{i}.attn" for i in range(3)]
    for probs_list in maps.values():
        (probs,) = probs_list
        assert probs.shape == (2, 3, 17, 17)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 17))
    # Outside the context manager nothing is recorded.
    assert all(m.attention_store is None for m in model.modules() if hasattr(m, "attention_store"))
    with torch.no_grad():
        model(x)
    assert all(len(v) == 1 for v in maps.values())


def test_capture_attention_needs_attention_layers():
    with pytest.raises(ValueError, match="no attention layers"), capture_attention(torch.nn.Linear(2, 2)):
        pass
