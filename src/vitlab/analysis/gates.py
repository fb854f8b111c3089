"""HorNet's gnConv gates as maps: it has no attention, so these are what `vitlab attention` draws for it.

A recursive gated convolution of order n (Rao et al. 2022, eq. 3.3-3.4) computes
p_{k+1} = g_k(p_k) * f_k(q_k), k = 0 .. n-1: the features of order k, a 1x1 convolution g_k (g_0 the
identity), multiplied elementwise by the depthwise-filtered gate f_k(q_k). The products p_1..p_n are
the model's spatial interactions of order 1 to n; each is drawn as one map over the image, the
root mean square over its channels at every position (where the order-k interaction is strong).

They are not attention: no weights over other positions, nothing sums to 1, and the values are
features of any sign (the RMS is what is drawn). `GnConv` hands the products to `gate_store` only
while `record_gates` runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.models.hornet import GnConv


@dataclass
class GateMaps:
    """One gnConv call: `products[k]` is p_{k+1} as (batch, H, W, C_k+1), on the map of that stage."""

    name: str
    products: list[Tensor]
    image_size: tuple[int, int]

    @property
    def order(self) -> int:
        return len(self.products)

    def magnitudes(self) -> Tensor:
        """(batch, order, H, W): each product's root mean square over its channels."""
        return torch.stack([p.double().square().mean(dim=-1).sqrt() for p in self.products], dim=1)


def has_gates(model: nn.Module) -> bool:
    return any(isinstance(m, GnConv) for m in model.modules())


@torch.no_grad()
def record_gates(model: nn.Module, images: Tensor) -> list[GateMaps]:
    """Every gnConv call of `model(images)` (eval mode), in the order they ran, with its gating products."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, GnConv)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no gnConv layers")
    stores: dict[str, list[list[Tensor]]] = {name: [] for name, _ in layers}
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=n: order.append(name)) for n, m in layers]
    was_training = model.training
    model.eval()
    try:
        for name, module in layers:
            module.gate_store = stores[name]
        model(images)
    finally:
        for handle in handles:
            handle.remove()
        for _, module in layers:
            module.gate_store = None
        model.train(was_training)
    seen: dict[str, int] = {}
    calls = []
    for name in order:
        index = seen[name] = seen.get(name, -1) + 1
        calls.append(GateMaps(name, stores[name][index], tuple(images.shape[-2:])))
    return calls


def draw_gates(gates: GateMaps, path: str | Path, image: np.ndarray | None = None, batch: int = 0) -> Path:
    """Write a PNG with one panel per order: |p_{k+1}| (RMS over channels) over the image, each its own scale."""
    from vitlab.analysis.draw import _pyplot, save_figure

    plt = _pyplot()
    maps = gates.magnitudes()[batch]
    cols = min(gates.order, 3)
    rows = math.ceil(gates.order / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.7), squeeze=False)
    H, W = gates.image_size
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= gates.order:
            continue
        if image is not None:
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=(0, W, H, 0))
        ax.imshow(maps[k].numpy(), cmap="inferno", alpha=0.6 if image is not None else 1.0, extent=(0, W, H, 0),
                  interpolation="nearest")  # fmt: skip
        ax.set_title(f"order {k + 1}: |p{k + 1}| max {float(maps[k].max()):.3g}", fontsize=8)
    fig.suptitle(
        f"{gates.name}: gnConv gating products p(k+1) = g_k(p_k) * f_k(q_k), RMS over channels\n"
        "(HorNet has no attention: these are gated features, not weights over positions)",
        fontsize=8,
    )
    return save_figure(fig, path)
