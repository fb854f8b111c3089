"""Exact inference-time folding: BatchNorm into the convolution before it, LayerScale into the Linear before it.

In eval mode a BatchNorm is the per-channel affine map y = s * x + t with s = gamma / sqrt(var + eps)
and t = beta - s * mean (running statistics). When x is the output of a convolution, W x + b, the two
are one convolution with weight s * W (output channel by output channel) and bias s * b + t. A
LayerScale, y = gamma * x, after a Linear folds the same way into the Linear's rows. The folded model
computes the same function with one pass over each activation fewer; only rounding differs (float64:
within 1e-10 of the unfolded model, tested).

Which modules feed which is found by running the model once on an example input with hooks: a
BatchNorm (or LayerScale) is folded only when, on every call, its input is the very tensor a
convolution (or Linear) has just returned, that producer feeds nothing else among the model's modules,
and each of the two is called as often as the other. Operations outside modules cannot be seen by
hooks, so the folded model is then run on the same example and compared with the original: a
difference beyond rounding raises instead of returning a wrong model.

The folded model is an eval-mode copy; the original is untouched. Its state dict differs (folded norms
are gone, convolutions gain biases), so it is for inference, not for saving as a checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vitlab.layers.drop import LayerScale

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS_THROUGH = (nn.Dropout, nn.Identity)


@dataclass
class _Dataflow:
    """What one hooked forward pass saw: producers' outputs and who consumed them."""

    made_by: dict[int, tuple[str, Tensor]] = field(default_factory=dict)  # id(output) -> producer (tensor kept alive)
    consumers: Counter = field(default_factory=Counter)  # id(output) -> modules that took it as input
    feeds: dict[str, set[str]] = field(default_factory=dict)  # foldable module -> producers seen feeding it
    calls: Counter = field(default_factory=Counter)


def _trace_dataflow(model: nn.Module, example: Tensor) -> _Dataflow:
    flow = _Dataflow()
    handles = []
    modules = dict(model.named_modules())

    def producer_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if isinstance(output, Tensor):
                flow.made_by[id(output)] = (name, output)

        return hook

    def consumer_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            flow.calls[name] += 1
            for arg in args:
                if isinstance(arg, Tensor) and id(arg) in flow.made_by:
                    flow.consumers[id(arg)] += 1
            if isinstance(module, (*_NORM, LayerScale)):
                source = flow.made_by.get(id(args[0])) if args and isinstance(args[0], Tensor) else None
                flow.feeds.setdefault(name, set()).add(source[0] if source else "")

        return hook

    def pass_through_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        # Eval-mode dropout and identities hand on their input unchanged: the producer's output flows on.
        source = flow.made_by.get(id(args[0])) if args and isinstance(args[0], Tensor) else None
        if source is not None and isinstance(output, Tensor) and torch.equal(output, args[0]):
            flow.made_by[id(output)] = (source[0], output)

    for name, module in modules.items():
        if not name or next(module.children(), None) is not None:
            continue  # hook leaf modules only
        if isinstance(module, _PASS_THROUGH):
            handles.append(module.register_forward_hook(pass_through_hook))
            continue
        handles.append(module.register_forward_pre_hook(consumer_hook(name)))
        if isinstance(module, (*_CONV, nn.Linear)):
            handles.append(module.register_forward_hook(producer_hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return flow


def _foldable_pairs(model: nn.Module, flow: _Dataflow) -> list[tuple[str, str]]:
    """(producer, follower) names where the follower always takes the producer's output, and only it does."""
    modules = dict(model.named_modules())
    shared = {flow.made_by[key][0] for key, count in flow.consumers.items() if count > 1}
    pairs = []
    for follower, sources in flow.feeds.items():
        if len(sources) != 1 or "" in sources:
            continue
        (producer,) = sources
        if producer in shared or flow.calls[producer] != flow.calls[follower]:
            continue
        first, second = modules[producer], modules[follower]
        norm_after_conv = isinstance(second, _NORM) and isinstance(first, _CONV) and _norm_foldable(second, first)
        scale_after_linear = isinstance(second, LayerScale) and isinstance(first, nn.Linear)
        if norm_after_conv or scale_after_linear and second.gamma.numel() == first.out_features:
            pairs.append((producer, follower))
    return pairs


def _norm_foldable(norm: nn.modules.batchnorm._BatchNorm, conv: nn.Module) -> bool:
    return norm.track_running_stats and norm.running_var is not None and norm.num_features == conv.out_channels


@torch.no_grad()
def _fold_norm(conv: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    _scale_rows(conv, scale, shift)


@torch.no_grad()
def _scale_rows(layer: nn.Module, scale: Tensor, shift: Tensor | None = None) -> None:
    """layer(x) -> scale * layer(x) + shift, per output channel, by rewriting its weight and bias."""
    weight = layer.weight
    scale = scale.to(weight.dtype)
    weight.mul_(scale.view(-1, *([1] * (weight.ndim - 1))))
    bias = torch.zeros_like(scale) if layer.bias is None else layer.bias * scale
    if shift is not None:
        bias = bias + shift.to(weight.dtype)
    layer.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=weight.requires_grad)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def fold_for_inference(model: nn.Module, example: Tensor | None = None, tolerance: float | None = None) -> nn.Module:
    """An eval-mode copy of `model` with BatchNorms folded into their convolutions and LayerScales into their Linears.

    `example` is an input the model takes (default: one image of the model's `img_size`, or 224 x 224,
    with its `in_chans` channels, in the model's dtype); it is used to find which modules feed which and
    to check the folded copy against the original, which must agree within `tolerance` (relative to
    the largest output; default 1e-10 in float64, 1e-4 otherwise) or a RuntimeError is raised.
    The copy's `folded` attribute lists the (producer, folded module) names.
    """
    folded = copy.deepcopy(model).eval()
    if example is None:
        example = _default_example(folded)
    pairs = _foldable_pairs(folded, _trace_dataflow(folded, example))
    for producer, follower in pairs:
        first, second = folded.get_submodule(producer), folded.get_submodule(follower)
        if isinstance(second, LayerScale):
            _scale_rows(first, second.gamma.detach())
        else:
            _fold_norm(first, second)
        _replace(folded, follower, nn.Identity())
    folded.folded = pairs
    was_training = model.training
    try:
        _check_equal(model.eval(), folded, example, tolerance)
    finally:
        model.train(was_training)
    return folded


def _default_example(model: nn.Module) -> Tensor:
    parameter = next(model.parameters())
    size = getattr(model, "img_size", None) or (224, 224)
    channels = getattr(model, "in_chans", 3)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, *size, generator=generator).to(parameter.device, parameter.dtype)


def _outputs(value: object) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _outputs(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _outputs(item)]
    if dataclasses.is_dataclass(value):
        return [t for f in dataclasses.fields(value) for t in _outputs(getattr(value, f.name))]
    return []


def _check_equal(original: nn.Module, folded: nn.Module, example: Tensor, tolerance: float | None) -> None:
    with torch.no_grad():
        expected, actual = _outputs(original(example)), _outputs(folded(example))
    if tolerance is None:
        tolerance = 1e-10 if example.dtype == torch.float64 else 1e-4
    for a, b in zip(expected, actual, strict=True):
        error = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
        if error > tolerance:
            raise RuntimeError(
                f"folding changed the output of {type(original).__name__} by {error:.2e} (relative, above "
                f"{tolerance:.0e}): a folded module's input is also used outside the model's modules"
            )
