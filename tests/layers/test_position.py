import math

import pytest
import torch

from vitlab.layers import resize_pos_embed, sinusoidal_1d, sinusoidal_2d


def test_sinusoidal_1d_follows_the_paper():
    table = sinusoidal_1d(50, 16)
    pos, i = 7, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)


def test_sinusoidal_2d_encodes_rows_then_columns():
    table = sinusoidal_2d(3, 4, 16).view(3, 4, 16)
    torch.testing.assert_close(table[2, 1, :8], sinusoidal_1d(3, 8)[2])
    torch.testing.assert_close(table[2, 1, 8:], sinusoidal_1d(4, 8)[1])
    with pytest.raises(ValueError, match="divisible by 4"):
        sinusoidal_2d(3, 4, 10)


def test_resize_pos_embed_keeps_prefix_and_resizes_grid():
    table = torch.randn(1, 2 + 16, 8)
    resized = resize_pos_embed(table, (6, 3), num_prefix_tokens=2)
    assert resized.shape == (1, 2 + 18, 8)
    assert torch.equal(resized[:, :2], table[:, :2])
    assert resize_pos_embed(table, (4, 4), num_prefix_tokens=2) is table
    with pytest.raises(ValueError, match="not a square"):
        resize_pos_embed(torch.randn(1, 1 + 12, 8), (4, 4))


def test_resize_of_a_constant_grid_stays_constant():
    table = torch.cat([torch.zeros(1, 1, 4), torch.full((1, 9, 4), 0.5)], dim=1)
    resized = resize_pos_embed(table, (5, 7), (3, 3))
    torch.testing.assert_close(resized[:, 1:], torch.full((1, 35, 4), 0.5))
