"""Attention maps read out of a model, against the same quantities computed by hand."""

import pytest
import torch

import vitlab
from vitlab.analysis import attention_rollout, class_token_attention


def small(global_pool="token", img_size=(32, 40)):
    torch.manual_seed(0)
    return vitlab.create_model(
        "vit_tiny_patch16_224", embed_dim=16, depth=3, num_heads=2, img_size=img_size, patch_size=8,
        global_pool=global_pool,
    ).eval()  # fmt: skip


def attention_by_hand(model, x):
    """Each block's attention probabilities, from its own q and k (not from capture_attention)."""
    probs = []
    tokens, _ = model.embed(x)
    for block in model.blocks:
        attn = block.attn
        B, N, C = tokens.shape
        q, k, _ = attn.qkv(block.norm1(tokens)).view(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        probs.append((q @ k.transpose(-1, -2) * attn.head_dim**-0.5).softmax(-1))
        tokens = block(tokens)
    return probs


@pytest.mark.parametrize("pool", ["token", "flatten"])
def test_rollout_multiplies_the_residual_mixed_attention_of_every_block(pool):
    model = small(pool)
    x = torch.randn(2, 3, 32, 40)  # a 4 x 5 grid of patches
    with torch.no_grad():
        probs = attention_by_hand(model, x)
        flow = torch.eye(21).expand(2, 21, 21)
        for p in probs:
            mixed = 0.5 * p.mean(1) + 0.5 * torch.eye(21)
            flow = (mixed / mixed.sum(-1, keepdim=True)) @ flow
        rows = flow[:, :1] if pool == "token" else flow[:, 1:]
        expected = rows[..., 1:].mean(1)
        expected = (expected / expected.sum(-1, keepdim=True)).reshape(2, 4, 5)
    torch.testing.assert_close(attention_rollout(model, x), expected, rtol=1e-4, atol=1e-6)


def test_class_token_attention_is_the_last_blocks_first_row():
    model = small(img_size=32)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        last = attention_by_hand(model, x)[-1]
    torch.testing.assert_close(class_token_attention(model, x), last[:, :, 0, 1:].mean(1).reshape(1, 4, 4))


def test_maps_need_tokens():
    model = vitlab.create_model("convnet_tiny", widths=(8,))
    with pytest.raises(ValueError, match="no tokens"):
        attention_rollout(model, torch.randn(1, 3, 16, 16))
