"""Pale groups: interlaced rows and columns, and PS-Attention (layers/grouping/pales.py)."""

import pytest
import torch

from tests.helpers import max_rel_error
from vitlab.layers.grouping.pales import (
    InterlacedGroups,
    PaleShapedAttention,
    column_groups_to_image,
    image_to_column_groups,
    image_to_row_groups,
    row_groups_to_image,
)

CPU = torch.device("cpu")


def coordinates(h: int, w: int) -> torch.Tensor:
    """A (2, h, w, 2) map whose channels are each token's (row, column)."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows, cols], dim=-1).expand(2, h, w, 2).float()


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


def test_plans_for_sides_that_are_not_multiples():
    assert [InterlacedGroups(7, "rows").plan((n, 3), CPU).groups for n in (56, 14, 7, 5, 15)] == [8, 2, 1, 1, 3]
    # 10 rows in groups of at most 4: N = 3 groups with 4, 3, 3 real rows, padded to 12 rows.
    plan = InterlacedGroups(4, "rows").plan((10, 5), CPU)
    assert (plan.groups, plan.padded) == (3, (12, 5))
    assert plan.mask.shape == (3, 1, 1, 20)
    assert plan.mask.sum(-1).flatten().tolist() == [20, 15, 15]
    columns = InterlacedGroups(4, "columns").plan((5, 10), CPU)
    assert columns.padded == (5, 12) and columns.mask.sum(-1).flatten().tolist() == [20, 15, 15]
    assert InterlacedGroups(4, "rows").plan((12, 5), CPU).mask is None


@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_group_pads_and_ungroup_crops(axis):
    scheme = InterlacedGroups(4, axis)
    plan = scheme.plan((10, 9), CPU)
    x = coordinates(10, 9)
    groups = scheme.group(x, plan)
    assert plan.groups == 3 and groups.shape == (2 * 3, plan.padded[0] * plan.padded[1] // 3, 2)
    torch.testing.assert_close(scheme.ungroup(groups, plan), x)


def test_axis_is_rows_or_columns():
    with pytest.raises(ValueError, match="axis must be one of"):
        InterlacedGroups(7, "height")


def naive_pale_attention(layer: PaleShapedAttention, x: torch.Tensor, pale_size: int) -> torch.Tensor:
    """PS-Attention token by token (Wu et al. 2022).

    The rows of an H x W map form N_r = ceil(H / s_r) groups of interlaced rows, row y in group
    y mod N_r (columns likewise); a token's pale is its row group together with its column group.
    The first half of the channels (and heads) attends over the row group, the second half over
    the column group; the two are concatenated and projected.
    """
    B, H, W, C = x.shape
    half, heads = C // 2, layer.rows.num_heads
    q, k, v = layer.qkv(x).chunk(3, dim=-1)
    n_rows, n_cols = -(-H // pale_size), -(-W // pale_size)
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    # Flat indices of the tokens in each interlaced row group and each interlaced column group.
    row_groups = [torch.nonzero((rows % n_rows == g).flatten())[:, 0] for g in range(n_rows)]
    column_groups = [torch.nonzero((cols % n_cols == g).flatten())[:, 0] for g in range(n_cols)]
    q, k, v = (t.reshape(B, H * W, C) for t in (q, k, v))
    out = torch.zeros(B, H * W, C)
    for y in range(H):
        for x_ in range(W):
            token = y * W + x_
            pale = (
                (row_groups[y % n_rows], slice(0, half), layer.rows),
                (column_groups[x_ % n_cols], slice(half, C), layer.columns),
            )
            for members, channels, branch in pale:
                keys = k[:, members, channels].reshape(B, -1, heads, half // heads)
                values = v[:, members, channels].reshape(B, -1, heads, half // heads)
                query = q[:, token, channels].reshape(B, 1, heads, half // heads)
                weights = torch.einsum("bqhd,bkhd->bhqk", query, keys).mul(branch.scale).softmax(-1)
                out[:, token, channels] = torch.einsum("bhqk,bkhd->bqhd", weights, values).reshape(B, half)
    return layer.proj(out.view(B, H, W, C))


@pytest.mark.parametrize(("size", "pale_size"), [((14, 14), 7), ((10, 13), 4), ((5, 3), 7), ((8, 6), 2)])
def test_ps_attention_matches_the_per_token_definition(size, pale_size):
    layer = PaleShapedAttention(dim=16, num_heads=4, pale_size=pale_size).eval()
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        assert max_rel_error(layer(x), naive_pale_attention(layer, x, pale_size)) < 1e-4
