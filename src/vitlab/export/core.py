"""What every export shares: the example inputs of a model, which of their axes may vary, and why not.

A model is exported as it runs in training and evaluation: the same modules, the same `attend()`.
Nothing is swapped for an "export mode" model; where a layer decided a shape-dependent branch in
Python, the layer itself records the general branch while a graph is traced
(`layers.grouping.is_tracing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn


class ExportError(ValueError):
    """An export that cannot be made or does not reproduce the model; the message names the model and size."""


# The families whose exported graphs keep a fixed height and width (the batch axis stays dynamic), and
# why. Keyed by model class; `dynamic_limit` adds the reasons that depend on a model's options. The
# tests export every family and check that exactly these are static, with these messages.
STATIC_SHAPES: dict[str, str] = {}  # none at present: Axial and PS-ViT were here (docs/export.md)
# The families whose graphs keep every axis fixed, batch included, and why.
STATIC_ALL: dict[str, str] = {
    "RecurrentSeq2Seq": "the recurrence loops over time steps in Python, so a traced graph unrolls the traced "
    "batch and lengths",
}
# Families that do not export to ONNX at all, and why: none at present (SASA, PS-ViT and HorNet with global
# filters were here until their layers were made traceable; docs/export.md).
NO_ONNX: dict[str, str] = {}


def onnx_limit(model: nn.Module) -> str | None:
    """Why `model` cannot be exported to ONNX at all; None when it can."""
    return NO_ONNX.get(family(model))


def family(model: nn.Module) -> str:
    """The key of `STATIC_SHAPES` and `NO_ONNX` for a model (a features_only wrapper counts as its model)."""
    return type(getattr(model, "model", model)).__name__


def dynamic_limit(model: nn.Module) -> str | None:
    """Why the height and width of `model`'s input cannot vary in an exported graph; None when they can."""
    inner = getattr(model, "model", model)
    if getattr(inner, "global_pool", None) == "flatten":
        return "its 'flatten' head classifies a fixed number of patches (a fixed-size head)"
    if family(model) in STATIC_ALL:
        return STATIC_ALL[family(model)]
    return STATIC_SHAPES.get(family(model))


def fixed_batch(model: nn.Module) -> bool:
    """Whether every axis of `model`'s exported graph is fixed, batch included (`STATIC_ALL`)."""
    return family(model) in STATIC_ALL


def is_sequence_model(model: nn.Module) -> bool:
    return hasattr(model, "example_inputs")


def own_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size a model's parameters are made for (`img_size`, of its encoder for segmentation)."""
    for part in (model, getattr(model, "model", None), getattr(model, "backbone", None)):
        img_size = getattr(part, "img_size", None)
        if img_size is not None and not isinstance(img_size, int):
            return (int(img_size[0]), int(img_size[1]))
        if isinstance(img_size, int):
            return (img_size, img_size)
    return None


def export_name(model: nn.Module, name: str | None = None) -> str:
    """What messages call the model: `name`, else its registered name, else its class's."""
    return name or getattr(getattr(model, "entry", None), "name", type(model).__name__)


def requested_size(model: nn.Module, img_size: tuple[int, int] | None) -> tuple[int, int]:
    """The size an export is asked for: `img_size`, else `default_size(model)`."""
    return tuple(img_size) if img_size is not None else default_size(model)


def default_size(model: nn.Module) -> tuple[int, int]:
    """The size a model is exported at unless told: the one its parameters are made for, else its preprocessing's."""
    img_size = own_size(model)
    if img_size is not None:
        return (int(img_size[0]), int(img_size[1]))
    entry = getattr(model, "entry", None)
    side = entry.preprocess.img_size if entry is not None else 224
    return (side, side)


def traced_size(model: nn.Module, size: tuple[int, int], dynamic: bool) -> tuple[int, int]:
    """The size a graph is traced at: `size`, or for a graph whose sides vary, a size other than the model's
    own, so that every "resize the position table to the input's grid" step is recorded (`resize_pos_embed`
    resamples at every size while exporting, and so do Segmenter's encoder and decoder, but a model's own
    branch on its size would be skipped at that size); the checks then run at `size` as well."""
    own = own_size(model)
    spatial = dynamic and dynamic_limit(model) is None and not is_sequence_model(model)
    if spatial and own is not None and tuple(size) == tuple(own):
        return other_size(size)
    return tuple(size)


def other_size(size: tuple[int, int]) -> tuple[int, int]:
    """A second size to check a dynamic graph at: larger in height, smaller in width, both odd, so that it
    divides no stride and crosses every padding and table-resizing branch the traced size did not take."""
    return (size[0] + size[0] // 2 + 1, size[1] - size[1] // 4 + 1)


def other_length(length: int) -> int:
    """A second sequence length to check a graph whose lengths vary at: shorter (torch.export allows no
    length below 2, and a learned position table none above its own), and other than `length`."""
    return max(2, length - length // 4 - 1)


@dataclass
class Signature:
    """Names, example values and dynamic axes of a model's inputs and outputs."""

    inputs: dict[str, Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)

    def with_batch(
        self, batch: int, model: nn.Module, size: tuple[int, int] | None = None, lengths: bool = False
    ) -> dict[str, Tensor]:
        """Inputs like the example ones for another batch (and image size; with `lengths`, token sequences of
        `other_length`), random, seeded."""
        generator = torch.Generator().manual_seed(batch * 1000 + (size[0] if size else 0) + lengths)
        made: dict[str, Tensor] = {}
        for name, value in self.inputs.items():
            shape = [batch, *value.shape[1:]]
            if size is not None and value.ndim == 4:
                shape[-2:] = size
            if lengths and value.ndim == 2:  # source and target lengths made different from each other too
                shape[1] = max(2, other_length(shape[1]) - sum(v.ndim == 2 for v in made.values()))
            if value.dtype.is_floating_point:
                made[name] = torch.randn(*shape, generator=generator, dtype=value.dtype)
            else:  # token ids: in range, but never the special ones at the start of the vocabulary
                high = int(getattr(model, "tgt_vocab_size", getattr(model, "num_classes", 10)))
                made[name] = torch.randint(min(4, high - 1), high, shape, generator=generator, dtype=value.dtype)
        return made


def signature(model: nn.Module, size: tuple[int, int], batch: int = 2, dynamic: bool = False) -> Signature:
    """The inputs `model` is traced on, their names, and the axes that vary when `dynamic`.

    Image models take `images` (batch, C, H, W); sequence models their teacher-forced pair (source
    tokens or image strip, target tokens), whose batch and target length vary.
    """
    spatial = dynamic and dynamic_limit(model) is None
    dynamic = dynamic and not fixed_batch(model)
    if is_sequence_model(model):
        first, target = model.example_inputs(batch)
        names = ("images", "targets") if first.ndim == 4 else ("source", "targets")
        axes = {0: "batch"} if first.ndim == 4 else {0: "batch", 1: "source_length"}
        sig = Signature({names[0]: first, names[1]: target}, ["logits"])
        if dynamic:
            sig.dynamic = {
                names[0]: axes,
                names[1]: {0: "batch", 1: "target_length"},
                "logits": {0: "batch", 1: "target_length"},
            }
        return sig
    x = torch.randn(batch, getattr(model, "in_chans", 3), *size, generator=torch.Generator().manual_seed(0))
    sig = Signature({"images": x}, ["logits"])
    if dynamic:
        image_axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
        sig.dynamic = {"images": image_axes, "logits": {0: "batch"}}
        if spatial and x.ndim == 4 and getattr(getattr(model, "entry", None), "task", None) == "semantic-segmentation":
            sig.dynamic["logits"] = {0: "batch", 2: "height", 3: "width"}
    return sig


def check_runs(model: nn.Module, inputs: dict[str, Tensor], name: str) -> list[Tensor]:
    """Run `model` eagerly on the export inputs; an input it cannot take is an ExportError naming the size."""
    try:
        with torch.no_grad():
            return flatten_outputs(model(*inputs.values()))
    except ValueError as err:
        shapes = ", ".join(f"{key} {tuple(value.shape)}" for key, value in inputs.items())
        raise ExportError(f"cannot export {name} at {shapes}: {err}") from err


def flatten_outputs(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in flatten_outputs(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in flatten_outputs(item)]
    raise ExportError(f"cannot export a model whose output is a {type(out).__name__}")


def max_relative_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    """max |actual - expected| / max |expected| over all outputs (the measure the parity tests use)."""
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape:
            raise ExportError(f"the exported graph gives shape {tuple(a.shape)} where the model gives {tuple(e.shape)}")
        e = e.double()
        worst = max(worst, ((a.double() - e).abs().max() / e.abs().max().clamp_min(1e-12)).item())
    return worst


@dataclass
class ExportResult:
    """What an export wrote and how it was checked: the file, the axes that vary, the reason others do
    not, and the maximum relative error against PyTorch at each size checked."""

    path: Path
    format: str
    size: tuple[int, int]
    dynamic_axes: dict[str, dict[int, str]]
    static_reason: str | None
    errors: dict[str, float]
    seconds: float = 0.0
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # torch.export: (min, max) of each varying axis

    def describe(self) -> str:
        lines = [f"wrote {self.path} ({self.format}, traced at {self.size[0]}x{self.size[1]}, {self.seconds:.1f} s)"]
        axes = sorted({axis for spec in self.dynamic_axes.values() for axis in spec.values()})
        lines.append(f"  dynamic axes: {', '.join(axes) if axes else 'none'}")
        for axis, (low, high) in self.ranges.items():
            upto = f" to {high}" if high < 2**31 else ""  # 2**31 stands for no upper bound
            lines.append(f"  {('batch', 'channels', 'height', 'width')[axis]} accepted from {low}{upto}")
        if self.static_reason:
            lines.append(f"  height and width are fixed: {self.static_reason}")
        for check, err in self.errors.items():
            lines.append(f"  checked {check}: max relative error {err:.2e}")
        return "\n".join(lines)
