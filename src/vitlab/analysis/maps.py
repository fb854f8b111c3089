"""Record every attention call of a forward pass in its geometry, and pick one query's map out of it.

    layers = record_layers(model, images)          # [LayerAttention], in the order the calls ran
    weights = query_weights(layers[-1], (x, y))    # (batch, heads, keys): one query's attention

`record_layers` runs the model under `capture_attention(model, positions=True)` with forward
pre-hooks that note each call's input shapes and the order of calls (so that a layer attending to
sampled tokens finds the positions its sampler reported just before), then hands each recorded call
to its layer type's geometry (`analysis.geometry`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vitlab.analysis.geometry import LayerAttention, LayerCall, Size2, geometry_for
from vitlab.layers.attention import POSITIONS_SUFFIX, AttentionLayer, PositionSampler, capture_attention

# How a PositionSampler's recorded positions become (batch, 1, n, 2) image pixels; families register.
SamplerToImage = Callable[[nn.Module, Tensor, Size2], Tensor]
SAMPLERS: dict[type, SamplerToImage] = {}

# Attention inside a model's embedding that `capture_attention` leaves out (T2T-ViT's tokens-to-token
# layers: tokens of the soft splits, not the blocks' ones, and large): classes with an `attention_store`
# that families register here and that `record_layers(..., embedding=True)` records.
EMBEDDING_ATTENTION: list[type] = []


def _is_attention(module: nn.Module, embedding: bool) -> bool:
    return isinstance(module, AttentionLayer) or (embedding and isinstance(module, tuple(EMBEDDING_ATTENTION)))


class NoAttentionError(ValueError):
    """A model without attention layers (HorNet's gnConv, the plain ConvNet): there are no maps to draw."""


def _shapes(args: tuple[Any, ...]) -> tuple[tuple[int, ...] | None, ...]:
    return tuple(tuple(a.shape) if isinstance(a, Tensor) else None for a in args)


def _sampler_points(module: nn.Module, positions: Tensor, image_size: Size2) -> Tensor | None:
    for cls in type(module).__mro__:
        if cls in SAMPLERS:
            return SAMPLERS[cls](module, positions, image_size)
    return None


def run_recorded(
    model: nn.Module, images: Tensor, forward: Callable[[Tensor], Any] | None = None, embedding: bool = False
):
    """Run `forward(images)` (the model by default) recording attention; returns (output, calls, maps).

    `calls` lists (name, module, input shapes) in the order the attention layers and samplers ran;
    with `embedding`, the attention inside the embedding (`EMBEDDING_ATTENTION`) is recorded too.
    """
    modules = [
        (n, m) for n, m in model.named_modules() if _is_attention(m, embedding) or isinstance(m, PositionSampler)
    ]
    extra = [(n, m) for n, m in modules if not isinstance(m, (AttentionLayer, PositionSampler))]
    if not any(isinstance(m, AttentionLayer) for _, m in modules):
        raise NoAttentionError(
            f"{type(model).__name__} has no attention layers: it mixes tokens by convolution "
            "(or gated convolution), so there are no attention maps to draw"
        )
    calls: list[tuple[str, nn.Module, tuple]] = []

    def hook(name: str) -> Callable:
        def pre(module: nn.Module, args: tuple) -> None:
            calls.append((name, module, _shapes(args)))

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules]
    try:
        with capture_attention(model, positions=True) as maps:
            for name, module in extra:
                module.attention_store = maps.setdefault(name, [])
            output = (forward or model)(images)
    finally:
        for handle in handles:
            handle.remove()
        for _, module in extra:
            module.attention_store = None
    return output, calls, maps


def layers_from_calls(model: nn.Module, calls: list, maps: dict, image_size: Size2) -> list[LayerAttention]:
    """Each attention call through its geometry; unknown layer types are named in the error."""
    seen: dict[str, int] = {}
    latest: Tensor | None = None
    layers = []
    for name, module, shapes in calls:
        index = seen[name] = seen.get(name, -1) + 1
        own = maps.get(name + POSITIONS_SUFFIX)
        own_positions = own[index] if own and index < len(own) else None
        if not _is_attention(module, True):
            latest = _sampler_points(module, own_positions, image_size) if own_positions is not None else None
            continue
        if index >= len(maps[name]):
            continue  # a layer that returned early without attending
        geometry = geometry_for(module)
        if geometry is None:
            raise NotImplementedError(
                f"no attention geometry registered for {type(module).__name__} ({name}): "
                "add one with vitlab.analysis.register_geometry"
            )
        call = LayerCall(name, module, model, maps[name][index], shapes, image_size, latest, own_positions)
        layers.append(geometry(call))
    return layers


def record_layers(model: nn.Module, images: Tensor, embedding: bool = False) -> list[LayerAttention]:
    """Every attention call of `model(images)` as a `LayerAttention`, in the order they ran (eval mode).

    `embedding` adds the attention inside the embedding that `capture_attention` leaves out
    (`EMBEDDING_ATTENTION`: T2T-ViT's tokens-to-token layers).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, calls, maps = run_recorded(model, images, embedding=embedding)
    finally:
        model.train(was_training)
    return layers_from_calls(model, calls, maps, tuple(images.shape[-2:]))


Query = str | tuple[float, float] | None


def query_index(layer: LayerAttention, query: Query = None, batch: int = 0) -> int:
    """The row of `layer.probs` for `query`: "cls" (the first prefix token), an (x, y) pixel, or None.

    None picks the class token where the queries have one, else the query nearest the image centre.
    A pixel picks the query whose position is nearest (grid cell centre or sampled point).
    """
    queries = layer.queries
    if query is None:
        query = "cls" if queries.prefix else (layer.image_size[1] / 2, layer.image_size[0] / 2)
    if isinstance(query, str):
        if query != "cls":
            raise ValueError(f"a query is 'cls' or x,y pixels, got {query!r}")
        if not queries.prefix:
            raise ValueError(f"{layer.name} has no class token among its queries ({queries.label}s)")
        return 0
    if not queries.spatial:
        return 0
    positions = queries.positions(layer.image_size)[min(batch, queries.positions(layer.image_size).shape[0] - 1), 0]
    target = torch.tensor(query, dtype=positions.dtype)
    return queries.prefix + int((positions - target).norm(dim=-1).argmin())


def query_weights(layer: LayerAttention, query: Query = None) -> Tensor:
    """(batch, heads, keys): the attention of one query over the layer's keys (prefix keys first)."""
    return layer.probs[:, :, query_index(layer, query)]
