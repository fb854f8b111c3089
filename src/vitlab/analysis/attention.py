"""What the classifier's decision draws on: attention rollout and its gradient-weighted variants.

- `attention_rollout` (Abnar and Zuidema 2020): each layer's attention, heads fused by mean, max or
  min, is mixed with the identity for the residual connection (0.5 A + 0.5 I, rows renormalised)
  and the layers' matrices are multiplied, last layer leftmost.
- `gradient_rollout` (Chefer, Gur and Wolf 2021, "Generic attention-model explainability", eq. 5-6):
  each layer's A-bar = mean over heads of (dy_c/dA * A)^+ for the class c, and R <- R + A-bar R from R = I.
- `attention_gradient`: one layer's A-bar alone (attention x gradient).

Which rows of the rolled-out matrix feed the classifier: the class token's for `global_pool="token"`
models; for models without a class token (`"avg"`, `"flatten"` pooling) the mean of the patch
tokens' rows, because average pooling hands the classifier the mean of those tokens (our answer
for pooled features; for "flatten" it is the same summary, the classifier's weights aside). The
columns are the input patches, renormalised to sum to 1 per image.

Rollout needs every layer to mix one and the same token set; it is defined for the token models
(ViT, DeiT, T2T, CeiT, ConViT, PS-ViT). Pyramids (Swin, PVT, ...) merge tokens between stages, and
a `ValueError` says so. ConViT's GPSA layers run before the class token joins: they act on the
patches only, the class token passing through unchanged (identity). Gradients of the attention
probabilities come from recording them un-detached while attention runs as plain products
(`explicit_attention`), so they are the probabilities the forward pass used.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from vitlab.analysis.geometry import LayerAttention
from vitlab.analysis.maps import layers_from_calls, record_layers, run_recorded
from vitlab.layers import attention as attention_module
from vitlab.layers.attention import POSITIONS_SUFFIX, explicit_attention

FUSIONS = ("mean", "max", "min")


def _grid(model: nn.Module, images: Tensor, layer: LayerAttention) -> tuple[int, int]:
    if layer.keys.grid is None:
        raise ValueError(f"{type(model).__name__}'s {layer.name} has no patch grid to map back to the image")
    return layer.keys.grid


def token_layers(model: nn.Module, layers: list[LayerAttention]) -> tuple[list[Tensor], LayerAttention]:
    """Each layer's (batch, heads, N, N) over the final token set (class token first), and the last layer."""
    last = layers[-1]
    count, prefix = last.keys.count, last.keys.prefix
    matrices = []
    for layer in layers:
        probs = layer.probs
        if probs.shape[-1] == probs.shape[-2] == count:
            matrices.append(probs)
        elif probs.shape[-1] == probs.shape[-2] == count - prefix and layer.queries.prefix == 0:
            full = torch.eye(count, dtype=probs.dtype).repeat(*probs.shape[:2], 1, 1)
            full[..., prefix:, prefix:] = probs  # before the class token joins (ConViT's GPSA): identity for it
            matrices.append(full)
        else:
            raise ValueError(
                f"attention rollout needs every layer to mix the same tokens; {type(model).__name__}'s "
                f"{layer.name} ({layer.kind}) maps {probs.shape[-2]} queries to {probs.shape[-1]} keys, the last "
                f"layer {count} tokens (pyramids merge tokens between stages; draw their maps per layer instead)"
            )
    return matrices, last


def fuse_heads(probs: Tensor, head_fusion: str) -> Tensor:
    """(batch, heads, N, N) -> (batch, N, N) by the mean, max or min over heads."""
    if head_fusion == "mean":
        return probs.mean(dim=1)
    if head_fusion == "max":
        return probs.amax(dim=1)
    if head_fusion == "min":
        return probs.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {FUSIONS}, got {head_fusion!r}")


def _classifier_rows(model: nn.Module, flow: Tensor, prefix: int, grid: tuple[int, int]) -> Tensor:
    """The classifier's rows of `flow` (see the module docstring) over the patches: (batch, h, w), summing to 1."""
    rows = flow[:, :1] if getattr(model, "global_pool", "avg") == "token" and prefix else flow[:, prefix:]
    patches = rows[..., prefix:].mean(dim=1)
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return patches.reshape(-1, *grid)


@torch.no_grad()
def attention_rollout(model: nn.Module, images: Tensor, head_fusion: str = "mean", residual: bool = True) -> Tensor:
    """How much each input patch feeds the classifier, by attention rollout: (batch, h, w) over the patch grid."""
    matrices, last = token_layers(model, record_layers(model, images))
    flow = None
    for probs in matrices:  # in the order the layers ran
        mixed = fuse_heads(probs, head_fusion)
        if residual:
            mixed = 0.5 * mixed + 0.5 * torch.eye(mixed.shape[-1], dtype=mixed.dtype)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        flow = mixed if flow is None else mixed @ flow
    return _classifier_rows(model, flow, last.keys.prefix, _grid(model, images, last))


@torch.no_grad()
def class_token_attention(model: nn.Module, images: Tensor, layer: int = -1) -> Tensor:
    """The class token's attention over the patches, averaged over heads: (batch, h, w) for one layer."""
    layers = record_layers(model, images)
    chosen = layers[layer]
    if not chosen.queries.prefix:
        raise ValueError(f"{type(model).__name__} has no class token in {chosen.name}")
    prefix = chosen.keys.prefix
    return chosen.probs[:, :, 0, prefix:].mean(dim=1).reshape(-1, *_grid(model, images, chosen))


@contextmanager
def _probabilities_with_gradients() -> Iterator[None]:
    """Record attention probabilities un-detached (gradients retained) instead of detached copies.

    Every vitlab module that imported `record_attention` is patched for the duration, so layers that
    compute their own softmax (ConViT's GPSA) are covered too.
    """
    original = attention_module.record_attention

    def keep(store: list[Tensor] | None, probs: Tensor) -> None:
        if store is not None:
            if probs.requires_grad:
                probs.retain_grad()
            store.append(probs)

    modules = [
        m
        for n, m in list(sys.modules.items())
        if n.startswith("vitlab") and getattr(m, "record_attention", None) is original
    ]
    for module in modules:
        module.record_attention = keep
    try:
        yield
    finally:
        for module in modules:
            module.record_attention = original


def attention_and_gradients(
    model: nn.Module, images: Tensor, target: int | Tensor | None = None
) -> tuple[list[LayerAttention], list[LayerAttention], Tensor]:
    """Every layer's attention and the gradient of the class score y_c with respect to it, and the classes c.

    `target` is the class (one for all images, or one per image); by default each image's predicted class.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), explicit_attention(), _probabilities_with_gradients():
            logits, calls, maps = run_recorded(model, images)
            if target is None:
                classes = logits.argmax(dim=-1)
            else:
                classes = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
            logits.gather(1, classes[:, None]).sum().backward()
    finally:
        model.train(was_training)
    size = tuple(images.shape[-2:])
    grads = {
        name: records
        if name.endswith(POSITIONS_SUFFIX)
        else [torch.zeros_like(p) if p.grad is None else p.grad for p in records]
        for name, records in maps.items()
    }
    detached = {name: [p.detach() for p in records] for name, records in maps.items()}
    return layers_from_calls(model, calls, detached, size), layers_from_calls(model, calls, grads, size), classes


def _weighted(probs: Tensor, grads: Tensor) -> Tensor:
    """A-bar = E_h[(grad * A)^+], (batch, N, N)."""
    return (grads * probs).clamp_min(0).mean(dim=1)


def gradient_rollout(model: nn.Module, images: Tensor, target: int | Tensor | None = None) -> Tensor:
    """Class-specific relevance of each patch (Chefer et al. 2021): (batch, h, w), summing to 1 per image."""
    layers, grads, _ = attention_and_gradients(model, images, target)
    matrices, last = token_layers(model, layers)
    grad_matrices, _ = token_layers(model, grads)
    relevance = torch.eye(matrices[0].shape[-1], dtype=matrices[0].dtype).expand(images.shape[0], -1, -1)
    for probs, grad in zip(matrices, grad_matrices, strict=True):
        relevance = relevance + _weighted(probs, grad) @ relevance
    return _classifier_rows(model, relevance, last.keys.prefix, _grid(model, images, last))


def attention_gradient(model: nn.Module, images: Tensor, target: int | Tensor | None = None, layer: int = -1) -> Tensor:
    """One layer's attention x gradient, E_h[(grad * A)^+], read at the classifier's rows: (batch, h, w)."""
    layers, grads, _ = attention_and_gradients(model, images, target)
    matrices, last = token_layers(model, layers)
    grad_matrices, _ = token_layers(model, grads)
    return _classifier_rows(
        model, _weighted(matrices[layer], grad_matrices[layer]), last.keys.prefix, _grid(model, images, last)
    )
