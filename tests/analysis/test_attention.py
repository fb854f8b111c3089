"""Rollout and its gradient-weighted variants, against the papers' recursions written out by hand."""

import pytest
import torch

import vitlab
from vitlab.analysis import NoAttentionError, attention_rollout, class_token_attention
from vitlab.analysis.attention import attention_gradient, gradient_rollout


def small(global_pool="token", img_size=(32, 40)):
    torch.manual_seed(0)
    return vitlab.create_model(
        "vit_tiny_patch16_224", embed_dim=16, depth=3, num_heads=2, img_size=img_size, patch_size=8,
        global_pool=global_pool, num_classes=4,
    ).eval().double()  # fmt: skip


def forward_by_hand(model, x):
    """The ViT forward pass written out, keeping each block's attention probabilities in the graph."""
    probs = []
    tokens, _ = model.embed(x)
    for block in model.blocks:
        attn = block.attn
        B, N, C = tokens.shape
        q, k, v = attn.qkv(block.norm1(tokens)).view(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        p = (q @ k.transpose(-1, -2) * attn.head_dim**-0.5).softmax(-1)
        if p.requires_grad:
            p.retain_grad()
        probs.append(p)
        tokens = tokens + attn.proj((p @ v).transpose(1, 2).reshape(B, N, C))
        tokens = tokens + block.mlp(block.norm2(tokens))
    return model.forward_head(model.norm(tokens)), probs


def classifier_rows(flow, pool):
    rows = flow[:, :1] if pool == "token" else flow[:, 1:]
    patches = rows[..., 1:].mean(1)
    return (patches / patches.sum(-1, keepdim=True)).reshape(-1, 4, 5)


@pytest.mark.parametrize("pool", ["token", "flatten"])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_multiplies_the_residual_mixed_attention_of_every_block(pool, fusion):
    model = small(pool)
    x = torch.randn(2, 3, 32, 40, dtype=torch.float64)  # a 4 x 5 grid of patches
    with torch.no_grad():
        _, probs = forward_by_hand(model, x)
        flow = torch.eye(21).expand(2, 21, 21).double()
        for p in probs:
            fused = {"mean": p.mean(1), "max": p.max(1).values, "min": p.min(1).values}[fusion]
            mixed = 0.5 * fused + 0.5 * torch.eye(21)
            flow = (mixed / mixed.sum(-1, keepdim=True)) @ flow
        expected = classifier_rows(flow, pool)
    torch.testing.assert_close(attention_rollout(model, x, head_fusion=fusion), expected)


def test_rollout_without_the_residual_is_the_plain_product():
    model = small()
    x = torch.randn(1, 3, 32, 40, dtype=torch.float64)
    with torch.no_grad():
        _, probs = forward_by_hand(model, x)
    flow = probs[2].mean(1) @ probs[1].mean(1) @ probs[0].mean(1)
    torch.testing.assert_close(attention_rollout(model, x, residual=False), classifier_rows(flow, "token"))


def chefer_by_hand(model, x, target):
    logits, probs = forward_by_hand(model, x)
    logits[:, target].sum().backward()
    relevance = torch.eye(21, dtype=torch.float64).expand(x.shape[0], 21, 21)
    bars = []
    for p in probs:
        bar = (p.grad * p).clamp(min=0).mean(1)
        bars.append(bar)
        relevance = relevance + bar @ relevance
    return relevance.detach(), [b.detach() for b in bars]


def test_gradient_rollout_is_chefers_recursion_for_the_chosen_class():
    model = small()
    x = torch.randn(2, 3, 32, 40, dtype=torch.float64)
    relevance, bars = chefer_by_hand(model, x, target=3)
    torch.testing.assert_close(gradient_rollout(model, x, target=3), classifier_rows(relevance, "token"))
    torch.testing.assert_close(attention_gradient(model, x, target=3), classifier_rows(bars[-1], "token"))
    other, _ = chefer_by_hand(model, x, target=0)
    assert not torch.allclose(gradient_rollout(model, x, target=0), classifier_rows(relevance, "token"))
    torch.testing.assert_close(gradient_rollout(model, x, target=0), classifier_rows(other, "token"))


def test_class_token_attention_is_the_last_blocks_first_row():
    model = small(img_size=32)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        last = forward_by_hand(model, x)[1][-1]
    torch.testing.assert_close(class_token_attention(model, x), last[:, :, 0, 1:].mean(1).reshape(1, 4, 4))


def test_convit_rolls_out_through_its_gpsa_layers_before_the_class_token():
    torch.manual_seed(0)
    model = vitlab.create_model("convit_tiny", embed_dim=16, depth=3, num_heads=4, local_up_to_layer=2).eval()
    rollout = attention_rollout(model, torch.randn(2, 3, 64, 80))
    assert rollout.shape == (2, 4, 5)
    torch.testing.assert_close(rollout.sum((1, 2)), torch.ones(2))


def test_pyramids_cannot_be_rolled_out_and_say_why():
    torch.manual_seed(0)
    model = vitlab.create_model(
        "swin_tiny_patch4_window7_224", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)
    )
    with pytest.raises(ValueError, match="same tokens"):
        attention_rollout(model.eval(), torch.randn(1, 3, 64, 64))


def test_maps_need_attention():
    model = vitlab.create_model("convnet_tiny", widths=(8,))
    with pytest.raises(NoAttentionError, match="no attention layers"):
        attention_rollout(model, torch.randn(1, 3, 16, 16))
