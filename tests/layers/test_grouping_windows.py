"""Windows and shifted windows (layers/grouping/windows.py): geometry, token order, shift masks, WindowAttention."""

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.layers.grouping import PLANS
from vitlab.layers.grouping.windows import (
    WindowAttention,
    Windows,
    shifted_window_mask,
    window_geometry,
    window_partition,
    window_token_order,
)
from vitlab.layers.position import relative_position_index


def test_partition_keeps_raster_order():
    x = torch.arange(2 * 6 * 8 * 3, dtype=torch.float32).view(2, 6, 8, 3)
    windows = window_partition(x, (3, 4))
    assert windows.shape == (2 * 4, 12, 3)
    torch.testing.assert_close(windows[1], x[0, 0:3, 4:8].reshape(12, 3))  # second window: top right
    torch.testing.assert_close(windows[4 + 2], x[1, 3:6, 0:4].reshape(12, 3))


@pytest.mark.parametrize(
    ("size", "window", "shift", "expected"),
    [
        ((56, 56), (7, 7), (3, 3), ((7, 7), (3, 3), (56, 56))),
        ((7, 7), (7, 7), (3, 3), ((7, 7), (0, 0), (7, 7))),  # stage 4 at 224: one window, no shift
        ((4, 4), (7, 7), (3, 3), ((4, 4), (0, 0), (4, 4))),  # smaller than the window: clamp, no padding
        ((7, 20), (7, 7), (3, 3), ((7, 7), (0, 3), (7, 21))),  # each side on its own
        ((25, 38), (7, 7), (3, 3), ((7, 7), (3, 3), (28, 42))),
    ],
)
def test_window_geometry(size, window, shift, expected):
    g = window_geometry(size, window, shift)
    assert (g.window, g.shift, g.padded) == expected


def naive_shift_mask(padded, window, shift):
    """Mask from the paper's definition: after rolling by -shift, two tokens of a window may attend to each
    other iff they lie in the same shifted window of the un-rolled map, whose windows start at shift + k * M
    (the last one, cut by the image border, is not joined to the first)."""
    H, W = padded
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    orig_r, orig_c = (rows + shift[0]) % H, (cols + shift[1]) % W  # where each rolled token came from
    band_r = torch.div(orig_r - shift[0], window[0], rounding_mode="floor")
    band_c = torch.div(orig_c - shift[1], window[1], rounding_mode="floor")
    label = (band_r * 1000 + band_c).float()[None, :, :, None]
    label = window_partition(label, window).squeeze(-1)
    same = label.unsqueeze(1) == label.unsqueeze(2)
    return torch.where(same, 0.0, -100.0)


@pytest.mark.parametrize(
    ("padded", "window", "shift"),
    [((56, 56), (7, 7), (3, 3)), ((8, 8), (4, 4), (2, 2)), ((12, 21), (6, 7), (3, 3)), ((7, 21), (7, 7), (0, 3))],
)
def test_shift_mask_matches_a_naive_region_labelling(padded, window, shift):
    mask = shifted_window_mask(padded, window, shift)
    torch.testing.assert_close(mask, naive_shift_mask(padded, window, shift), rtol=0, atol=0)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    inner = window_partition(torch.ones(1, *padded, 1), window).shape[0]
    assert mask.shape == (inner, window[0] * window[1], window[0] * window[1])
    assert mask[0].eq(0).all()  # an interior window is not masked


def attention_module(window=7, shift=3, dim=8, heads=2):
    module = WindowAttention(dim, heads, window, shift).eval()
    with torch.no_grad():
        module.relative_position_bias_table.normal_()
    return module


def test_token_order_is_pad_then_roll_then_partition():
    g = window_geometry((10, 12), (7, 7), (3, 3))
    gather, padding, scatter = window_token_order(g)
    x = torch.randn(2, 10, 12, 5)
    reference = window_partition(torch.roll(F.pad(x, (0, 0, 0, 2, 0, 4)), (-3, -3), (1, 2)), (7, 7))
    grouped = x.reshape(2, 120, 5).index_select(1, gather)
    grouped.index_fill_(1, padding, 0.0)
    torch.testing.assert_close(grouped.view(-1, 49, 5), reference)
    torch.testing.assert_close(grouped.index_select(1, scatter).view(2, 10, 12, 5), x)
    assert padding.numel() == 14 * 14 - 120
    assert window_token_order(window_geometry((14, 14), (7, 7), (0, 0)))[1] is None


def test_group_is_pad_roll_partition_and_ungroup_its_inverse():
    scheme = Windows((7, 7), (3, 3))
    plan = scheme.plan((10, 12), torch.device("cpu"))
    assert (plan.window, plan.shift, plan.padded, plan.num_windows) == ((7, 7), (3, 3), (14, 14), 4)
    x = torch.randn(2, 10, 12, 5)
    windows = scheme.group(x, plan)
    reference = window_partition(torch.roll(F.pad(x, (0, 0, 0, 2, 0, 4)), (-3, -3), (1, 2)), (7, 7))
    torch.testing.assert_close(windows, reference, rtol=0, atol=0)
    torch.testing.assert_close(scheme.ungroup(windows, plan), x, rtol=0, atol=0)


def test_grouping_and_ungrouping_have_exact_gradients():
    scheme = Windows((7, 7), (3, 3))
    plan = scheme.plan((10, 12), torch.device("cpu"))
    x = torch.randn(2, 10, 12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: scheme.group(t, plan), (x,))
    windows = torch.randn(2 * 4, 49, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: scheme.ungroup(t, plan), (windows,))


def test_padding_inside_equals_zero_padding_before_the_shift():
    module = attention_module()
    x = torch.randn(2, 10, 12, 8)
    padded = F.pad(x, (0, 0, 0, 2, 0, 4))
    with torch.no_grad():
        torch.testing.assert_close(module(x), module(padded)[:, :10, :12])


def test_a_map_within_one_window_is_full_attention_with_the_central_biases():
    module = attention_module()
    x = torch.randn(1, 4, 4, 8)
    with torch.no_grad():
        out = module(x)
        q, k, v = module.qkv(x.view(1, 16, 8)).view(1, 16, 3, 2, 4).permute(2, 0, 3, 1, 4)
        bias = module.relative_position_bias_table[relative_position_index((4, 4), (7, 7))].permute(2, 0, 1)
        probs = ((q * 4**-0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
        expected = module.proj((probs @ v).transpose(1, 2).reshape(1, 16, 8))
    torch.testing.assert_close(out, expected.view(1, 4, 4, 8))


def test_plans_first_built_under_inference_mode_serve_training():
    PLANS.clear()  # so that the plan is first built below, under inference_mode
    module = attention_module()
    x = torch.randn(1, 10, 12, 8)
    with torch.inference_mode():
        module(x)
    module.train()
    module(x).sum().backward()
    assert module.qkv.weight.grad is not None


def test_the_bias_stays_differentiable_and_current():
    module = attention_module().train()
    x = torch.randn(1, 14, 14, 8)
    module(x).sum().backward()
    assert module.relative_position_bias_table.grad.abs().sum() > 0
    with torch.no_grad():
        before = module(x)
        module.relative_position_bias_table.add_(1.0 + torch.randn_like(module.relative_position_bias_table))
        assert not torch.allclose(before, module(x))


def test_capture_gives_per_window_probabilities():
    module = attention_module()
    x = torch.randn(2, 14, 14, 8)
    with torch.no_grad():
        plain = module(x)
        with vitlab.capture_attention(module) as maps:
            captured = module(x)
    torch.testing.assert_close(plain, captured)
    (probs,) = maps[""]
    assert probs.shape == (2 * 4, 2, 49, 49)
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, 2, 49))
    mask = shifted_window_mask((14, 14), (7, 7), (3, 3)).repeat(2, 1, 1)
    assert probs.masked_select((mask < 0).unsqueeze(1).expand_as(probs)).max() < 1e-30


def test_shift_must_be_smaller_than_the_window():
    with pytest.raises(ValueError, match="shift"):
        WindowAttention(8, 2, 4, 4)


def test_the_plan_holds_the_central_rows_of_the_table_for_a_clamped_window():
    plan = Windows((7, 7), (3, 3)).plan((4, 9), torch.device("cpu"))
    assert (plan.window, plan.shift, plan.padded) == ((4, 7), (0, 3), (4, 14))
    torch.testing.assert_close(plan.index, relative_position_index((4, 7), (7, 7)).flatten())
    torch.testing.assert_close(plan.mask, shifted_window_mask((4, 14), (4, 7), (0, 3)))
