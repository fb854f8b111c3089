"""Token groupings: stripes (CSWin) and interlaced row/column groups (Pale)."""

import pytest
import torch

from vitlab.layers.local import (
    column_groups_to_image,
    image_to_column_groups,
    image_to_row_groups,
    image_to_stripes,
    pale_groups,
    pale_key_mask,
    row_groups_to_image,
    stripe_key_mask,
    stripe_layout,
    stripes_to_image,
)


def coordinates(h: int, w: int) -> torch.Tensor:
    """A (2, h, w, 2) map whose channels are each token's (row, column)."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows, cols], dim=-1).expand(2, h, w, 2).float()


@pytest.mark.parametrize("stripe", [(6, 1), (6, 2), (2, 8), (3, 4)])
def test_stripes_hold_rectangles_in_raster_order_and_invert(stripe):
    x = coordinates(6, 8)
    groups = image_to_stripes(x, stripe)
    sh, sw = stripe
    assert groups.shape == (2 * (6 // sh) * (8 // sw), sh * sw, 2)
    second = groups[1]  # the second stripe of the first image
    col0 = sw if 8 // sw > 1 else 0
    row0 = 0 if 8 // sw > 1 else sh
    assert second[0].tolist() == [row0, col0] and second[-1].tolist() == [row0 + sh - 1, col0 + sw - 1]
    torch.testing.assert_close(stripes_to_image(groups, stripe, (6, 8)), x)


def test_stripe_layout_pads_to_whole_stripes_and_shrinks_stripes_wider_than_the_map():
    assert stripe_layout((9, 10), (None, 4)) == ((9, 4), (9, 12))
    assert stripe_layout((9, 10), (4, None)) == ((4, 10), (12, 10))
    assert stripe_layout((9, 10), (None, 12)) == ((9, 10), (9, 10))
    assert stripe_layout((9, 10), (None, None)) == ((9, 10), (9, 10))


def test_stripe_masks_exclude_exactly_the_padding_and_are_cached():
    assert stripe_key_mask((9, 8), (9, 8), (9, 4), torch.device("cpu")) is None
    mask = stripe_key_mask((9, 10), (9, 12), (9, 4), torch.device("cpu"))
    assert mask.shape == (3, 1, 1, 36) and mask.dtype == torch.bool
    assert mask[:2].all()
    last = mask[2, 0, 0].view(9, 4)
    assert last[:, :2].all() and not last[:, 2:].any()
    assert stripe_key_mask((9, 10), (9, 12), (9, 4), torch.device("cpu")) is mask


@pytest.mark.parametrize(("h", "w", "groups"), [(14, 14, 2), (12, 6, 3), (7, 5, 1)])
def test_row_and_column_groups_are_interlaced_and_invert(h, w, groups):
    x = coordinates(h, w)
    rows = image_to_row_groups(x, groups)
    assert rows.shape == (2 * groups, h // groups * w, 2)
    for g in range(groups):
        assert set(rows[g, :, 0].long().tolist()) == set(range(g, h, groups))  # rows g, g+N, g+2N, ...
        assert set(rows[g, :, 1].long().tolist()) == set(range(w))  # each spanning the full width
    torch.testing.assert_close(row_groups_to_image(rows, groups, (h, w)), x)
    if w % groups == 0:
        cols = image_to_column_groups(x, groups)
        for g in range(groups):
            assert set(cols[g, :, 1].long().tolist()) == set(range(g, w, groups))
            assert set(cols[g, :, 0].long().tolist()) == set(range(h))
        torch.testing.assert_close(column_groups_to_image(cols, groups, (h, w)), x)


def test_pale_groups_and_masks_for_sides_that_are_not_multiples():
    assert [pale_groups(n, 7) for n in (56, 14, 7, 5, 15)] == [8, 2, 1, 1, 3]
    # 10 rows in groups of at most 4: N = 3 groups with 4, 3, 3 real rows, padded to 12 rows.
    mask = pale_key_mask((10, 5), (12, 5), 3, "rows", torch.device("cpu"))
    assert mask.shape == (3, 1, 1, 20)
    assert mask.sum(-1).flatten().tolist() == [20, 15, 15]
    assert pale_key_mask((10, 5), (12, 5), 3, "rows", torch.device("cpu")) is mask
    columns = pale_key_mask((5, 10), (5, 12), 3, "columns", torch.device("cpu"))
    assert columns.sum(-1).flatten().tolist() == [20, 15, 15]
    assert pale_key_mask((12, 5), (12, 5), 3, "rows", torch.device("cpu")) is None
