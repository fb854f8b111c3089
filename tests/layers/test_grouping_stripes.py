"""Cross-shaped window stripes and CSWin's stripe attention with LePE (layers/grouping/stripes.py)."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import max_rel_error
from vitlab.layers.grouping.stripes import LePEStripeAttention, Stripes, image_to_stripes, stripes_to_image

CPU = torch.device("cpu")


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


@pytest.mark.parametrize(
    ("width", "axis", "stripe", "padded"),
    [
        (4, "columns", (9, 4), (9, 12)),  # vertical stripes, padded to whole stripes
        (4, "rows", (4, 10), (12, 10)),  # horizontal stripes
        (12, "columns", (9, 10), (9, 10)),  # wider than the map: one stripe, nothing padded
        (4, None, (9, 10), (9, 10)),  # the whole map
    ],
)
def test_plans_pad_to_whole_stripes_and_shrink_stripes_wider_than_the_map(width, axis, stripe, padded):
    plan = Stripes(width, axis).plan((9, 10), CPU)
    assert (plan.stripe, plan.padded) == (stripe, padded)
    assert (plan.mask is None) == (padded == (9, 10))


def test_stripe_masks_exclude_exactly_the_padding():
    scheme = Stripes(4, "columns")
    mask = scheme.plan((9, 10), CPU).mask
    assert mask.shape == (3, 1, 1, 36) and mask.dtype == torch.bool
    assert mask[:2].all()
    last = mask[2, 0, 0].view(9, 4)
    assert last[:, :2].all() and not last[:, 2:].any()


def test_group_pads_and_ungroup_crops():
    scheme = Stripes(4, "rows")
    plan = scheme.plan((9, 5), CPU)
    x = coordinates(9, 5)
    groups = scheme.group(x, plan)
    assert groups.shape == (2 * 3, 4 * 5, 2)
    torch.testing.assert_close(groups[2, 5:], torch.zeros(15, 2))  # rows 9-11 of the last stripe are padding
    torch.testing.assert_close(scheme.ungroup(groups, plan), x)


def test_axis_is_rows_columns_or_none():
    with pytest.raises(ValueError, match="axis must be one of"):
        Stripes(4, "vertical")


def naive_stripe_attention(layer: LePEStripeAttention, q, k, v, columns: bool, width: int):
    """Attention + LePE computed stripe by stripe, the last stripe simply narrower, nothing padded."""
    B, H, W, C = q.shape
    heads = layer.num_heads
    out = torch.zeros_like(q)
    for start in range(0, W if columns else H, width):
        region = (
            (slice(None), slice(None), slice(start, start + width))
            if columns
            else (slice(None), slice(start, start + width))
        )
        qs, ks, vs = q[region], k[region], v[region]
        h, w = qs.shape[1:3]
        qh, kh, vh = (t.reshape(B, h * w, heads, C // heads).transpose(1, 2) for t in (qs, ks, vs))
        probs = (qh @ kh.transpose(-1, -2) * layer.scale).softmax(-1)
        y = (probs @ vh).transpose(1, 2).reshape(B, h, w, C)
        lepe = F.conv2d(vs.permute(0, 3, 1, 2), layer.get_v.weight, layer.get_v.bias, padding=1, groups=C)
        out[region] = y + lepe.permute(0, 2, 3, 1)
    return out


@pytest.mark.parametrize("axis", ["columns", "rows"])
@pytest.mark.parametrize(("size", "width"), [((6, 8), 2), ((7, 10), 4), ((5, 9), 7), ((3, 2), 7)])
def test_padding_is_masked_so_the_last_stripe_is_just_narrower(axis, size, width):
    layer = LePEStripeAttention(8, 2, width, axis, scale=0.3, attn_drop=0.0).eval()
    torch.nn.init.normal_(layer.get_v.weight)
    torch.nn.init.normal_(layer.get_v.bias)
    q, k, v = torch.randn(3, 2, *size, 8).unbind(0)
    with torch.no_grad():
        expected = naive_stripe_attention(layer, q, k, v, axis == "columns", width)
        assert max_rel_error(layer(q, k, v), expected) < 1e-5
