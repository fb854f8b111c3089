"""Axial and neighbourhood groupings of layers/local.py."""

import pytest
import torch

from vitlab.layers.local import axial_sequences, merge_axial_sequences, neighbourhood_mask, neighbourhoods


def test_axial_sequences_are_columns_or_rows_and_merge_back():
    x = torch.randn(2, 3, 4, 5)
    columns = axial_sequences(x, "height")
    assert columns.shape == (2 * 5, 3, 4)
    torch.testing.assert_close(columns[1 * 5 + 2], x[1, :, :, 2])  # image 1, column 2
    rows = axial_sequences(x, "width")
    assert rows.shape == (2 * 4, 3, 5)
    torch.testing.assert_close(rows[0 * 4 + 3], x[0, :, 3, :])  # image 0, row 3
    torch.testing.assert_close(merge_axial_sequences(columns, 2, "height"), x)
    torch.testing.assert_close(merge_axial_sequences(rows, 2, "width"), x)
    with pytest.raises(ValueError, match="axis must be one of"):
        axial_sequences(x, "depth")


def test_neighbourhoods_gather_the_window_centred_on_each_pixel():
    x = torch.randn(2, 3, 5, 6)
    windows = neighbourhoods(x, 3)
    assert windows.shape == (2, 30, 9, 3) and windows.is_contiguous()
    i, j = 2, 4
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            position = (dy + 1) * 3 + (dx + 1)
            torch.testing.assert_close(windows[1, i * 6 + j, position], x[1, :, i + dy, j + dx])
    assert (windows[:, 0, 0] == 0).all()  # the top-left pixel's up-left neighbour is outside: zeros


def test_neighbourhood_mask_counts_the_positions_inside_the_map():
    mask = neighbourhood_mask(5, 6, 7)
    assert mask.shape == (30, 49) and mask.dtype == torch.bool
    assert mask[0].sum() == 4 * 4  # corner: offsets 0..3 down and right
    assert mask[2 * 6 + 2].sum() == 5 * 6  # (2, 2): rows 0..4 (all 5), columns -1..5 of which 0..5
    assert mask[0, 3 * 7 + 3]  # every pixel sees itself


def test_neighbourhoods_need_an_odd_kernel():
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        neighbourhoods(torch.randn(1, 1, 4, 4), 4)
