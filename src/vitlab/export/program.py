"""torch.export programs (`.pt2`): traced, saved with `torch.export.save`, reloaded and re-run."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from torch import nn

from vitlab.export.core import (
    ExportError,
    ExportResult,
    check_runs,
    dynamic_limit,
    export_name,
    flatten_outputs,
    is_sequence_model,
    other_size,
    requested_size,
    signature,
    traced_size,
)
from vitlab.export.to_onnx import compare_at_checks


def export_program(
    model: nn.Module, img_size: tuple[int, int] | None = None, dynamic: bool = False, name: str | None = None
) -> torch.export.ExportedProgram:
    """`torch.export.export` of `model` in eval mode on its example inputs.

    With `dynamic`, the axes `signature` names are marked `Dim.AUTO`: they stay symbolic unless the
    model's code fixes them (then torch.export keeps the traced value and the program checks it).
    """
    name = export_name(model, name)
    model = model.eval()
    size = requested_size(model, img_size)
    sig = signature(model, size, dynamic=dynamic)
    check_runs(model, sig.inputs, name)
    shapes = None
    if dynamic:
        shapes = tuple({axis: _dim(model, axis) for axis in sig.dynamic.get(key, {})} or None for key in sig.inputs)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, tuple(sig.inputs.values()), dynamic_shapes=shapes)
    except Exception as err:
        raise ExportError(
            f"torch.export cannot trace {name}: {type(err).__name__}: {str(err).splitlines()[0]}"
        ) from err


def _dim(model: nn.Module, axis: int) -> object:
    """`Dim.AUTO` for an input axis, bounded below for the sides of a model with a `symbolic_min_size`, so that
    the program refuses a smaller side by name instead of failing a guard on an expression of it."""
    least = getattr(model, "symbolic_min_size", None)
    if least is None or axis not in (2, 3):
        return torch.export.Dim.AUTO
    return torch.export.Dim.AUTO(min=least[axis - 2])


def symbolic_axes(
    program: torch.export.ExportedProgram, inputs: list[str], named: dict[str, dict[int, str]] | None = None
) -> dict[str, dict[int, str]]:
    """The input axes that stayed symbolic in `program`, under the input names `signature` gives (`inputs`)
    and the axis names of `named` (a signature's dynamic axes: "source_length", "target_length"...)."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    default = {0: "batch", 1: "length", 2: "height", 3: "width"}
    axes = {}
    for key, label in zip(program.graph_signature.user_inputs, inputs, strict=True):
        shape = placeholders[key].meta["val"].shape
        names = {**default, **(named or {}).get(label, {})}
        dims = {i: names.get(i, f"axis{i}") for i, dim in enumerate(shape) if isinstance(dim, torch.SymInt)}
        if dims:
            axes[label] = dims
    return axes


def axis_ranges(program: torch.export.ExportedProgram, inputs: list[str]) -> dict[str, dict[int, tuple[int, int]]]:
    """The (min, max) torch.export allows for each symbolic input axis (its guards: e.g. no map side of 1)."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    ranges: dict[str, dict[int, tuple[int, int]]] = {}
    for key, label in zip(program.graph_signature.user_inputs, inputs, strict=True):
        for i, dim in enumerate(placeholders[key].meta["val"].shape):
            bounds = program.range_constraints.get(dim.node.expr) if isinstance(dim, torch.SymInt) else None
            if bounds is not None:
                upper = int(bounds.upper) if bounds.upper < 2**31 else 2**31  # no upper bound: infinity
                ranges.setdefault(label, {})[i] = (int(bounds.lower), upper)
    return ranges


def inside(size: tuple[int, int], ranges: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """`size` moved into the program's ranges for the height (axis 2) and width (axis 3), odd where it moved."""
    out = list(size)
    for side, axis in enumerate((2, 3)):
        low, high = ranges.get(axis, (0, 2**31))
        if not low <= out[side] <= high:
            out[side] = min(max(out[side], low + (low % 2 == 0)), high)
    return (out[0], out[1])


def save_program(
    model: nn.Module,
    path: str | Path,
    img_size: tuple[int, int] | None = None,
    dynamic: bool = False,
    name: str | None = None,
    verify: bool = True,
) -> ExportResult:
    """Export `model` with torch.export, save it to `path` (.pt2), load it back and check that it gives
    the model's outputs (max relative error below 1e-4) at the sizes its symbolic axes allow."""
    name = export_name(model, name)
    model = model.eval()
    asked = requested_size(model, img_size)
    size = traced_size(model, asked, dynamic)
    start = time.perf_counter()
    program = export_program(model, size, dynamic, name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    seconds = time.perf_counter() - start
    sig = signature(model, size, dynamic=True)
    axes = symbolic_axes(program, list(sig.inputs), sig.dynamic)
    spatial = any("height" in spec.values() for spec in axes.values())
    if spatial:  # the second size is checked inside the sides torch.export allows (result.ranges)
        ranges = axis_ranges(program, list(sig.inputs)).get("images", {})
        asked = inside(asked if tuple(asked) != tuple(size) else other_size(size), ranges)
    fixed_sides = dynamic and not spatial and not is_sequence_model(model)  # a sequence model's image strip is fixed
    reason = (dynamic_limit(model) or "torch.export specialised the height and width") if fixed_sides else None
    result = ExportResult(path, "torch-export", size, axes, reason, {}, seconds)
    if spatial:
        result.ranges = ranges
    if verify:
        least_batch = result.ranges.get(0, (1, 0))[0]  # torch.export allows batches from 2 (0/1 specialisation)
        result.errors = verify_program(path, model, size, axes, name, asked, least_batch)
    return result


def verify_program(
    path: str | Path,
    model: nn.Module,
    size: tuple[int, int],
    axes: dict[str, dict[int, str]],
    name: str,
    asked: tuple[int, int] | None = None,
    least_batch: int = 1,
) -> dict[str, float]:
    """Max relative error of the reloaded program against `model` at each of `checks_for(size, axes, ...)`."""
    module = torch.export.load(str(path)).module()
    run = lambda inputs: flatten_outputs(module(*inputs.values()))  # noqa: E731
    sig = signature(model, size)
    return compare_at_checks(model, sig, size, axes, asked, name, run, "the reloaded program", least_batch)
