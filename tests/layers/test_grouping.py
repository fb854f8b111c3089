"""The grouping interface (layers/grouping/__init__.py): the one plan cache, the padding helper, the axes."""

import pytest
import torch

import vitlab
from vitlab.layers.grouping import AXES, PLANS, PlanCache, pad_to_multiple, padded_size
from vitlab.layers.grouping.axes import Axes
from vitlab.layers.grouping.neighbourhoods import Neighbourhoods
from vitlab.layers.grouping.pales import InterlacedGroups
from vitlab.layers.grouping.stripes import Stripes
from vitlab.layers.grouping.windows import WindowAttention, Windows

CPU = torch.device("cpu")
SCHEMES = [
    Windows((7, 7), (3, 3)),
    Stripes(4, "columns"),
    InterlacedGroups(4, "rows"),
    Axes("columns"),
    Neighbourhoods(3),
]


@pytest.fixture
def empty_cache():
    PLANS.clear()
    yield PLANS
    PLANS.clear()


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: type(s).__name__)
def test_a_plan_is_built_once_per_size_and_device_and_reused(scheme, empty_cache, monkeypatch):
    built = []
    build = type(scheme).build
    monkeypatch.setattr(
        type(scheme), "build", lambda self, size, device: built.append(size) or build(self, size, device)
    )
    first = scheme.plan((10, 9), CPU)
    assert scheme.plan((10, 9), "cpu") is first  # the same key however the size and device are written
    assert type(scheme)(**vars(scheme)).plan(torch.Size([10, 9]), CPU) is first  # equal parameters share plans
    assert built == [(10, 9)]
    assert scheme.plan((9, 10), CPU) is not first and built == [(10, 9), (9, 10)]
    assert len(empty_cache) == 2


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if not isinstance(s, Axes)], ids=lambda s: type(s).__name__)
def test_plans_are_ordinary_tensors_even_when_built_under_inference_mode(scheme, empty_cache):
    with torch.inference_mode():
        plan = scheme.plan((10, 9), CPU)
    tensors = [value for value in vars(plan).values() if isinstance(value, torch.Tensor)]
    assert tensors and not any(t.is_inference() or t.requires_grad for t in tensors)


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    cache = PlanCache(maxsize=3)
    for key in "abc":
        cache.get(key, lambda: object())
    kept = cache.get("a", lambda: pytest.fail("a is cached"))  # "a" is now the most recently used
    cache.get("d", lambda: object())
    assert len(cache) == 3 and [key in cache for key in "abcd"] == [True, False, True, True]
    assert cache.get("a", object) is kept
    assert (cache.hits, cache.misses) == (2, 4)


def test_the_shared_cache_holds_at_most_its_bound(empty_cache):
    scheme = Axes("rows")
    first = scheme.plan((1, 1), CPU)
    for side in range(2, PLANS.maxsize + 2):
        scheme.plan((side, 1), CPU)
    assert len(PLANS) == PLANS.maxsize == 64
    assert scheme.plan((1, 1), CPU) is not first  # the oldest plan was evicted and is built again


@pytest.mark.parametrize(
    "name", ["swin_tiny_patch4_window7_224", "cswin_tiny_224", "pale_tiny_224", "sasa_resnet26", "axial26s"]
)
def test_models_build_their_plans_on_the_first_pass_only(name, empty_cache):
    model = vitlab.create_model(name, **vitlab.registry.get_entry(name).tiny).eval()
    x = torch.randn(1, 3, 90, 70)  # no side a multiple of the windows, stripes or pales: padded plans
    with torch.no_grad():
        model(x)
        built = PLANS.misses
        model(x)
    assert built > 0 and PLANS.misses == built and PLANS.hits >= built


def test_tracing_for_export_leaves_the_cache_alone(empty_cache):
    module = WindowAttention(8, 2, 7, 3).eval()
    x = torch.randn(1, 10, 12, 8)
    with torch.no_grad():
        exported = torch.export.export(module, (x,))
        assert len(PLANS) == 0  # the plan built while tracing holds the tracer's tensors
        torch.testing.assert_close(exported.module()(x), module(x))


def test_pad_to_multiple_pads_bottom_and_right_with_zeros():
    x = torch.randn(2, 3, 5, 7)
    padded = pad_to_multiple(x, (4, 4))
    assert padded.shape == (2, 3, 8, 8) and (padded[..., 5:, :] == 0).all() and (padded[..., 7:] == 0).all()
    torch.testing.assert_close(padded[..., :5, :7], x)
    last = pad_to_multiple(x.permute(0, 2, 3, 1), (2, 3), channels_last=True)
    assert last.shape == (2, 6, 9, 3)
    torch.testing.assert_close(last.permute(0, 3, 1, 2)[..., :5, :7], x)
    assert pad_to_multiple(x, (5, 7)) is x
    assert padded_size((5, 7), (4, 4)) == (8, 8) and padded_size((8, 3), (4, 1)) == (8, 3)


def test_one_axis_vocabulary():
    assert AXES == ("rows", "columns")
    for make in (lambda axis: Stripes(2, axis), lambda axis: InterlacedGroups(2, axis), Axes):
        assert all(make(axis) for axis in AXES)
        with pytest.raises(ValueError, match=r"axis must be one of \('rows', 'columns'\)"):
            make("width")
