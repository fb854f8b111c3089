"""Neighbourhoods: the k x k window around each pixel (layers/grouping/neighbourhoods.py)."""

import pytest
import torch

from vitlab.layers.grouping.neighbourhoods import Neighbourhoods, neighbourhoods

CPU = torch.device("cpu")


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


def test_group_gives_one_key_set_per_pixel_and_ungroup_one_output_per_pixel():
    scheme = Neighbourhoods(3)
    x = torch.randn(2, 3, 5, 6)
    plan = scheme.plan((5, 6), CPU)
    groups = scheme.group(x, plan)
    assert groups.shape == (2 * 30, 9, 3)
    torch.testing.assert_close(groups[30 + 2 * 6 + 4, 4], x[1, :, 2, 4])  # the centre of the window is the pixel
    torch.testing.assert_close(scheme.ungroup(groups[:, 4], plan), x)


def test_the_plan_masks_the_positions_outside_the_map():
    mask = Neighbourhoods(7).plan((5, 6), CPU).mask
    assert mask.shape == (30, 1, 1, 49) and mask.dtype == torch.bool
    mask = mask[:, 0, 0]
    assert mask[0].sum() == 4 * 4  # corner: offsets 0..3 down and right
    assert mask[2 * 6 + 2].sum() == 5 * 6  # (2, 2): rows 0..4 (all 5), columns -1..5 of which 0..5
    assert mask[0, 3 * 7 + 3]  # every pixel sees itself


def test_neighbourhoods_need_an_odd_kernel():
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        Neighbourhoods(4)
