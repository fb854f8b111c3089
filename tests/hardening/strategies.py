"""Hypothesis strategies shared by the property tests: image sides, constructor overrides."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Sides that break naive code: 1 and 2 (a 1x1 map after the stem), odd and prime sides, sides one off
# a power of two, and anything in between.
EDGE_SIDES = [1, 2, 3, 5, 7, 15, 17, 31, 33, 63, 65]


def sides(high: int = 80) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(EDGE_SIDES), st.integers(1, high))


@st.composite
def image_sizes(draw: st.DrawFn) -> tuple[int, int]:
    """(height, width): square, odd, 1x1, or very wide / very tall (up to 1:64)."""
    kind = draw(st.sampled_from(["any", "wide", "tall"]))
    height, width = draw(sides()), draw(sides())
    if kind == "wide":
        height, width = draw(st.integers(1, 8)), draw(st.integers(100, 256))
    elif kind == "tall":
        height, width = draw(st.integers(100, 256)), draw(st.integers(1, 8))
    return height, width


def _mutations(value: Any) -> st.SearchStrategy[Any] | None:
    """Another value of the same kind: an integer changed, one entry of an integer tuple changed, or
    the tuple one entry short (a wrong number of stages)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return st.sampled_from(sorted({1, 2, 3, value + 1, 2 * value} - {value}))
    if isinstance(value, tuple) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        changed = st.tuples(st.integers(0, len(value) - 1), st.sampled_from([1, 2, 3]), st.booleans()).map(
            lambda t: value[: t[0]] + ((value[t[0]] + t[1]) if t[2] else t[1],) + value[t[0] + 1 :]
        )
        return st.one_of(changed, st.just(value[:-1]))
    return None


@st.composite
def overrides(draw: st.DrawFn, tiny: dict[str, Any], generic: dict[str, st.SearchStrategy]) -> dict[str, Any]:
    """Constructor arguments: the tiny configuration, sometimes with one of its integer arguments (or
    one entry of a nested dict of them) changed, and some of the `generic` arguments every model of the
    task takes (num_classes, in_chans, img_size)."""
    args = dict(tiny)
    mutable = [k for k, v in tiny.items() if _mutations(v) is not None or isinstance(v, dict)]
    if mutable and draw(st.booleans()):
        key = draw(st.sampled_from(mutable))
        if isinstance(tiny[key], dict):
            inner = [k for k, v in tiny[key].items() if _mutations(v) is not None]
            if inner:
                sub = draw(st.sampled_from(inner))
                args[key] = {**tiny[key], sub: draw(_mutations(tiny[key][sub]))}
        else:
            args[key] = draw(_mutations(tiny[key]))
    for name, strategy in generic.items():
        if draw(st.booleans()):
            args[name] = draw(strategy)
    return args


def changed(args: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    """The arguments that differ from the tiny configuration (what an error must name)."""
    return {k: v for k, v in args.items() if tiny.get(k, object()) != v}


def names_an_argument(message: str, args: dict[str, Any]) -> bool:
    """Whether a construction error names one of the changed arguments or one of their values."""
    for key, value in args.items():
        if key in message or key.rstrip("s") in message:
            return True
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            parts = v if isinstance(v, tuple) else (v,)
            if str(v) in message or any(str(p) in message for p in parts if not isinstance(p, bool)):
                return True
    return False
