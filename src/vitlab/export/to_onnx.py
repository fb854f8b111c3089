"""ONNX files, checked with onnxruntime against PyTorch.

The exporter is torch.onnx's TorchScript tracer (`dynamo=False`), chosen by measurement
(docs/export.md): on the tiny configurations it exports a family in seconds where the dynamo
exporter took minutes per model on the same machine, and it gave the same outputs wherever both
worked. Shapes stay symbolic where the model computes them with tensor operations; where a family
builds them as Python integers, the graph is static in height and width and `STATIC_SHAPES` says why.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.export.core import (
    ExportError,
    ExportResult,
    check_runs,
    dynamic_limit,
    export_name,
    flatten_outputs,
    max_relative_error,
    onnx_limit,
    other_size,
    requested_size,
    signature,
    traced_size,
)

OPSET = 18  # Resize's `antialias` (position tables shrunk as timm shrinks them) needs 18
TOLERANCE = 1e-4  # max relative error of onnxruntime against PyTorch


def _antialiased_resize(mode: str):
    """The ONNX symbolic of torch's antialiased interpolation (`F.interpolate(..., antialias=True)`).

    torch's antialiased kernels are PIL's: cubic with a = -0.5 (not the -0.75 of plain bicubic), taps
    outside the image dropped and the weights renormalised, pixel centres at i + 0.5. ONNX Resize says
    the same with cubic_coeff_a=-0.5, exclude_outside=1, half_pixel and antialias=1 (opset 18).
    """

    def symbolic(g, x, output_size, align_corners, scale_factors):
        from torch.onnx import symbolic_helper as sh

        if sh._maybe_get_const(align_corners, "b"):
            raise ExportError("antialiased interpolation with align_corners=True has no ONNX equivalent")
        sizes = sh._maybe_get_const(output_size, "is")
        if isinstance(sizes, list):
            spatial = g.op("Constant", value_t=torch.tensor(sizes, dtype=torch.int64))
        else:
            parts = [sh._unsqueeze_helper(g, sh._maybe_get_scalar(v), [0]) for v in sh._unpack_list(output_size)]
            spatial = g.op("Concat", *[g.op("Cast", p, to_i=7) for p in parts], axis_i=0)
        leading = g.op(
            "Slice",
            g.op("Shape", x),
            g.op("Constant", value_t=torch.tensor([0])),
            g.op("Constant", value_t=torch.tensor([2])),
        )
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op(
            "Resize",
            x,
            empty,
            empty,
            g.op("Concat", leading, spatial, axis_i=0),
            mode_s=mode,
            cubic_coeff_a_f=-0.5,
            exclude_outside_i=1,
            antialias_i=1,
            coordinate_transformation_mode_s="half_pixel",
        )

    return symbolic


def _unfold(g, x, dimension, size, step):
    """The ONNX form of `Tensor.unfold(dimension, size, step)` for an input whose sizes are symbolic.

    torch.onnx's own symbolic needs the size of the unfolded axis as a constant ("input size not
    accessible" after a traced pad). Here the window starts come from the input's Shape at run time:
    Gather with indices start_i + j (i < (L - size) // step + 1, j < size) along `dimension`, then
    the window axis moved last, as unfold places it.
    """
    from torch.onnx import symbolic_helper as sh

    dim, size, step = (
        sh._get_const(dimension, "i", "dimension"),
        sh._get_const(size, "i", "size"),
        sh._get_const(step, "i", "step"),
    )
    rank = sh._get_tensor_rank(x)
    if rank is None:
        raise ExportError("cannot export Tensor.unfold of a tensor whose rank is unknown")
    dim = dim % rank

    def const(value):
        return g.op("Constant", value_t=torch.tensor(value, dtype=torch.int64))

    length = g.op("Gather", g.op("Shape", x), const(dim), axis_i=0)
    count = g.op("Add", g.op("Div", g.op("Sub", length, const(size)), const(step)), const(1))
    starts = g.op("Mul", g.op("Range", const(0), count, const(1)), const(step))
    index = g.op("Add", g.op("Unsqueeze", starts, const([1])), const([list(range(size))]))
    windows = g.op("Gather", x, index, axis_i=dim)  # (..., count, size, ...)
    perm = [*range(dim + 1), *range(dim + 2, rank + 1), dim + 1]
    return g.op("Transpose", windows, perm_i=perm)


def _register_symbolics() -> None:
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _antialiased_resize("cubic"), OPSET)
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _antialiased_resize("linear"), OPSET)
    torch.onnx.register_custom_op_symbolic("aten::unfold", _unfold, OPSET)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_size: tuple[int, int] | None = None,
    dynamic: bool = False,
    name: str | None = None,
    verify: bool = True,
) -> ExportResult:
    """Write `model` (in eval mode) to an ONNX file and check it with onnxruntime.

    `dynamic`: the batch axis varies, and height and width too unless `dynamic_limit(model)` names a
    reason; the check then runs two batch sizes and, where the sides vary, a second size
    (`other_size`). The maximum relative error must stay below `TOLERANCE` at each, else ExportError.
    """
    name = export_name(model, name)
    if onnx_limit(model) is not None:
        raise ExportError(f"{name} cannot be exported to ONNX: {onnx_limit(model)}")
    model = model.eval()
    asked = requested_size(model, img_size)
    size = traced_size(model, asked, dynamic)
    sig = signature(model, size, dynamic=dynamic)
    check_runs(model, sig.inputs, name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _register_symbolics()
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, tuple(sig.inputs.values()), str(path), dynamo=False, opset_version=OPSET,
                input_names=list(sig.inputs), output_names=sig.outputs, dynamic_axes=sig.dynamic or None,
            )  # fmt: skip
    except ExportError:
        raise
    except Exception as err:  # the exporter's own errors name the operator it lacks
        raise ExportError(f"cannot export {name} to ONNX: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    seconds = time.perf_counter() - start
    reason = dynamic_limit(model) if dynamic else None
    result = ExportResult(path, "onnx", size, sig.dynamic, reason, {}, seconds)
    if verify:
        result.errors = verify_onnx(path, model, size, sig.dynamic, name, asked)
    return result


def checks_for(
    size: tuple[int, int],
    dynamic_axes: dict[str, dict[int, str]],
    asked: tuple[int, int] | None = None,
    least_batch: int = 1,
) -> list[tuple[int, tuple[int, int], bool]]:
    """The (batch, size, other lengths) a graph traced at `size` is checked at: the traced batch and size,
    another batch where it varies, token sequences of `other_length` where lengths vary, and where the
    sides vary the size asked for (when the trace was made at another) or `other_size(size)`."""
    axes = {axis for spec in dynamic_axes.values() for axis in spec.values()}
    checks = [(2, size, False)]
    if "batch" in axes:
        checks.append((3, size, False))
    if any(axis.endswith("length") for axis in axes):  # sequence models: sequences of other lengths
        checks.append((3, size, True))
    if "height" in axes:
        at = asked if asked is not None and tuple(asked) != tuple(size) else other_size(size)
        checks.append((least_batch, at, False))
    return checks


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter: on failure it prints the whole traced graph (the raised error says what failed)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def verify_onnx(
    path: str | Path,
    model: nn.Module,
    size: tuple[int, int],
    dynamic_axes: dict[str, dict[int, str]],
    name: str,
    asked: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Max relative error of onnxruntime against `model` at each of `checks_for(...)`; ExportError above TOLERANCE."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sig = signature(model, size, dynamic=bool(dynamic_axes))

    def run(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feed = {key: value.numpy() for key, value in inputs.items()}
        return [torch.from_numpy(out) for out in session.run(None, feed)]

    return compare_at_checks(model, sig, size, dynamic_axes, asked, name, run, "onnxruntime")


def compare_at_checks(
    model: nn.Module,
    sig: Any,
    size: tuple[int, int],
    axes: dict[str, dict[int, str]],
    asked: tuple[int, int] | None,
    name: str,
    run: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]],
    runner: str,
    least_batch: int = 1,
) -> dict[str, float]:
    """Max relative error of `run` (an exported graph) against `model` at each of `checks_for(size, axes,
    asked)`; ExportError naming `runner` and the check where it cannot run or differs by more than TOLERANCE."""
    errors = {}
    for batch, at, other_lengths in checks_for(size, axes, asked, least_batch):
        inputs = sig.with_batch(batch, model, None if at == size else at, other_lengths)
        label = f"batch {batch} at {at[0]}x{at[1]}"
        if other_lengths:
            label = f"batch {batch}, lengths {' and '.join(str(v.shape[1]) for v in inputs.values() if v.ndim == 2)}"
        with torch.no_grad():
            expected = flatten_outputs(model(*inputs.values()))
            try:
                actual = run(inputs)
            except Exception as err:  # most often a shape the graph holds fixed
                raise ExportError(f"{name}: {runner} cannot run the graph for {label}: {str(err)[:300]}") from err
        errors[label] = max_relative_error(actual, expected)
        if errors[label] > TOLERANCE:
            raise ExportError(
                f"{name}: {runner} differs from PyTorch by {errors[label]:.2e} (max relative) for {label}"
            )
    return errors
