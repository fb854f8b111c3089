"""Cordonnier et al. 2020: multi-head self-attention with the quadratic encoding reproduces a convolution."""

import pytest
import torch
from torch import nn

from vitlab.analysis.convolution import QuadraticEncodingAttention
from vitlab.layers.attention import capture_attention


@pytest.mark.parametrize("kernel, size", [(3, (5, 7)), (5, (6, 6))])
def test_attention_equals_the_convolution_to_float64_precision(kernel, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel, padding=kernel // 2).double()
    layer = QuadraticEncodingAttention.from_convolution(conv)
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    with torch.no_grad():
        expected, got = conv(x), layer(x)
    assert layer.value.shape[0] == kernel**2  # N_h = K^2 heads
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_each_head_attends_to_one_pixel_at_its_shift():
    torch.manual_seed(0)
    layer = QuadraticEncodingAttention.from_convolution(nn.Conv2d(2, 3, 3, padding=1).double())
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    with capture_attention(layer) as maps, torch.no_grad():
        layer(x)
    probs = maps[""][0]  # (1, 9 heads, 20 queries, 6 * 7 padded keys)
    assert probs.shape == (1, 9, 20, 42)
    query = 1 * 5 + 2  # pixel (1, 2)
    for h, (dy, dx) in enumerate(layer.shifts.long().tolist()):
        key = (1 + dy + 1) * 7 + (2 + dx + 1)  # in the map padded by 1 on every side
        assert probs[0, h, query, key] == 1.0


def test_a_soft_alpha_is_not_the_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1).double()
    soft = QuadraticEncodingAttention.from_convolution(conv, alpha=0.5)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert (soft(x) - conv(x)).abs().max() > 1e-3


def test_other_convolutions_are_refused():
    with pytest.raises(ValueError, match="stride-1"):
        QuadraticEncodingAttention.from_convolution(nn.Conv2d(2, 2, 3, stride=2, padding=1))
