"""Plans built in the graph (`layers.grouping.in_graph`: the ONNX tracer, torch.compile) against the cached plans.

In a graph, Swin's windows keep their full size on maps narrower than the window (phantom keys
masked) and decide the shift with tensor operations; CSWin's stripes keep their width (padding
masked); Pale's groups and masks come from arithmetic on the sizes; DAT's reference points and offset
scale come from the traced key grid. Here the graph's branch is run
eagerly (`torch.jit.is_tracing` patched to say a trace is running) and compared with the eager path,
whose parity with the official code the fixtures check. Sizes cross every case: sides shorter than,
equal to and longer than the window at some stage, divisible or not, shifted or not.
"""

import pytest
import torch

import vitlab
from tests.helpers import graph_branch_error
from vitlab.layers.grouping import window_graph
from vitlab.layers.grouping.windows import Windows
from vitlab.registry import get_entry

SIZES = [(64, 64), (97, 49), (32, 32), (33, 130)]


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "cswin_tiny_224", "pale_tiny_224", "dat_tiny"])
def test_the_graph_branch_gives_the_eager_outputs(name, monkeypatch):
    torch.manual_seed(0)
    model = vitlab.create_model(name, **get_entry(name).tiny, num_classes=3).eval().double()
    for size in SIZES:
        err = graph_branch_error(model, torch.randn(1, 3, *size, dtype=torch.float64), monkeypatch)
        assert err < 1e-12, (size, err)


def test_a_window_plan_in_the_graph_masks_phantom_keys_and_shifts_only_long_sides():
    """A 5 x 20 map, window 7, shift 3: rows shorter than the window (two phantom rows, masked, no shift
    along them), columns padded to 21 and shifted."""
    plan = window_graph.graph_window_plan((5, 20), (7, 7), (3, 3), torch.device("cpu"))
    assert plan.num_windows == 3 and plan.mask.shape == (3, 49, 49)
    phantom = (plan.mask == window_graph.PHANTOM) | (plan.mask == window_graph.PHANTOM + window_graph.SHIFT_MASK)
    assert phantom.all(dim=1).view(3, 7, 7)[:, 5:].all() and not phantom.all(dim=1).view(3, 7, 7)[:, :5].any()
    # Each token appears in exactly one slot; the slots left over are the padding (index H * W, a zero token).
    assert sorted(plan.gather[plan.gather < 100].tolist()) == list(range(100))
    assert plan.gather[plan.scatter].tolist() == list(range(100))
    # Shift along the columns only: the cached plan of the eager path rolls the same way.
    cached = Windows((7, 7), (3, 3)).build((5, 20), torch.device("cpu"))
    assert cached.window == (5, 7) and cached.shift == (0, 3)
    x = torch.randn(1, 5, 20, 4)
    eager = Windows((7, 7), (3, 3)).group(x, cached).view(1, 3, 5, 7, 4)
    graph = window_graph.graph_group(x, plan).view(1, 3, 7, 7, 4)
    torch.testing.assert_close(graph[:, :, :5], eager, rtol=0, atol=0)
    assert not graph[:, :, 5:].any()
