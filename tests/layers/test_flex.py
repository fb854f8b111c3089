"""SASA's FlexAttention path (`vitlab.layers.flex`): the outputs of the gathered windows, taken only where chosen.

The layer's flex path (its mask, its relative-position score, the layouts around them) is checked here
with flex_attention replaced by its definition computed densely (compiling the kernel takes most of a
minute on a loaded CPU); tests/live/test_flex_compiled.py checks the compiled kernel (VITLAB_LIVE=1).
"""

import pytest
import torch

from vitlab.layers import flex
from vitlab.layers.attention import capture_attention
from vitlab.models.sasa import LocalSelfAttention

pytestmark = pytest.mark.skipif(not flex.flex_available(), reason="torch has no FlexAttention")


def layer(channels: int = 64, heads: int = 2) -> LocalSelfAttention:
    torch.manual_seed(0)
    return LocalSelfAttention(channels, channels, kernel_size=7, num_heads=heads).eval()


def dense_flex(q, k, v, score_mod, block_mask, scale):
    """flex_attention's definition computed densely: score_mod and the block mask's mask_mod on every pair."""
    B, H, L, _ = q.shape
    b, h = torch.arange(B)[:, None, None, None], torch.arange(H)[None, :, None, None]
    q_idx, kv_idx = torch.arange(L)[:, None], torch.arange(L)[None, :]
    scores = score_mod((q @ k.transpose(-2, -1)) * scale, b, h, q_idx, kv_idx)
    scores = scores.masked_fill(~block_mask.mask_mod(b, h, q_idx, kv_idx), float("-inf"))
    return scores.softmax(-1) @ v


def test_flex_path_equals_the_gathered_windows_in_float32(monkeypatch):
    attention = layer()  # heads of 32 channels: the path is taken
    x = torch.randn(2, 64, 9, 11, generator=torch.Generator().manual_seed(1))  # non-square, border pixels
    taken = []
    monkeypatch.setattr(flex, "_compiled_flex", lambda: lambda *a, **k: taken.append(1) or dense_flex(*a, **k))
    with torch.no_grad():
        expected = attention(x)  # off by default: the gathered windows
        assert not taken
        with flex.flex_attention_enabled(True):
            actual = attention(x)
    assert taken, "the flex path was not taken"
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert error < 1e-5


def test_flex_path_is_only_taken_where_it_was_measured_to_win():
    x = torch.randn(1, 64, 8, 8)
    weight = torch.zeros(1, requires_grad=True)
    with torch.no_grad():
        assert not flex.use_flex(x, 2, 32, False, weight)  # opt-in: no compilation unless asked
    with torch.no_grad(), flex.flex_attention_enabled(True):
        assert flex.use_flex(x, 2, 32, False, weight)
        assert not flex.use_flex(x, 4, 16, False, weight)  # narrow heads: slower by flex
        assert not flex.use_flex(x[..., :6, :6], 2, 32, False, weight)  # 36 tokens, below FLEX_MIN_TOKENS
        assert not flex.use_flex(x.double(), 2, 32, False, weight)  # float64 keeps the parity path
        assert not flex.use_flex(x, 2, 32, True, weight)  # attention being recorded
        with flex.flex_attention_enabled(False):
            assert not flex.use_flex(x, 2, 32, False, weight)
    with flex.flex_attention_enabled(True):
        assert not flex.use_flex(x, 2, 32, False, weight)  # a gradient is needed: training keeps the gathered path


def test_capture_attention_still_reports_probabilities_on_maps_flex_would_take():
    attention = layer()
    with torch.no_grad(), flex.flex_attention_enabled(True), capture_attention(attention) as maps:
        attention(torch.randn(1, 64, 8, 8))
    assert maps[""][0].shape == (64, 2, 1, 49)
