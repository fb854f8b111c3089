"""SASA's FlexAttention path with the compiled kernel (the minute-long compilation keeps it out of `make test`)."""

import pytest
import torch

from vitlab.layers import flex
from vitlab.models.sasa import LocalSelfAttention

pytestmark = pytest.mark.skipif(not flex.flex_available(), reason="torch has no FlexAttention")


@pytest.mark.parametrize("size", [(9, 11), (28, 28)])
def test_compiled_flex_path_equals_the_gathered_windows_in_float32(size):
    torch.manual_seed(0)
    attention = LocalSelfAttention(64, 64, kernel_size=7, num_heads=2).eval()
    x = torch.randn(2, 64, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = attention(x)
        with flex.flex_attention_enabled(True):
            actual = attention(x)
    assert flex._shape_key(2, 2, size, 32, x) in flex._compiled_shapes, "the flex path was not taken"
    assert ((actual - expected).abs().max() / expected.abs().max()).item() < 1e-5
