"""Attention pictures: one panel per head (or per visual token), drawn over the image in the layer's geometry.

Keys on a grid are a heat map over the image (each cell where it lies, padding cells past the
image edge left out of view); sampled keys (DAT, PS-ViT) are points whose area grows with their
weight; keys with no place in the image (visual tokens, layer class tokens) are bars. The query is
a cross: the chosen pixel's cell or point; a class token query has none.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vitlab.analysis.geometry import LayerAttention
from vitlab.analysis.maps import Query, query_index


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay `fig` out, write it as a PNG at `path` (folders made) and close it."""
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def panels(layer: LayerAttention, query: Query, head: int | None, batch: int = 0) -> tuple[Tensor, list[str]]:
    """The weights each panel shows, (panels, keys), and their titles.

    Heads by default (or the one `head`); a layer whose queries have no place in the image (VT's
    tokenizer: visual tokens query the pixels) shows each query token instead, of `head` (0).
    """
    probs = layer.probs[batch]  # (heads, queries, keys)
    heads = range(probs.shape[0]) if head is None else [head]
    if head is not None and not 0 <= head < probs.shape[0]:
        raise ValueError(f"{layer.name} has {probs.shape[0]} heads, got --head {head}")
    if not layer.queries.spatial and layer.queries.count > 1 and layer.keys.spatial:
        return probs[0 if head is None else head], [f"{layer.queries.label} {t}" for t in range(probs.shape[1])]
    row = query_index(layer, query, batch)
    return probs[list(heads), row], [f"head {h}" for h in heads]


def _query_point(layer: LayerAttention, query: Query, batch: int) -> tuple[float, float] | None:
    queries = layer.queries
    row = query_index(layer, query, batch)
    if not queries.spatial or row < queries.prefix:
        return None
    positions = queries.positions(layer.image_size)
    x, y = positions[min(batch, positions.shape[0] - 1), 0, row - queries.prefix].tolist()
    return x, y


def _draw_panel(ax, layer: LayerAttention, weights: Tensor, image: np.ndarray | None, panel: int, batch: int) -> None:
    keys, (H, W) = layer.keys, layer.image_size
    spatial = weights[keys.prefix :].double()
    if image is not None:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=(0, W, H, 0))
    if keys.grid is not None:
        h, w = keys.grid
        cell_h, cell_w = keys.cell or (H / h, W / w)
        top, left = keys.offset
        ax.imshow(spatial.view(h, w).numpy(), cmap="inferno", alpha=0.6 if image is not None else 1.0,
                  extent=(left, left + w * cell_w, top + h * cell_h, top), interpolation="nearest")  # fmt: skip
    elif keys.points is not None:
        points = keys.points[min(batch, keys.points.shape[0] - 1), min(panel, keys.points.shape[1] - 1)]
        size = 400 * spatial / spatial.max().clamp_min(1e-12)
        ax.scatter(points[:, 0], points[:, 1], s=size.numpy(), c="cyan", edgecolors="black", linewidths=0.5)
    else:
        ax.bar(range(len(weights)), weights.double().numpy(), color="tab:orange")
        ax.set_xlabel(f"{keys.label}s")
        return
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_layer(
    layer: LayerAttention,
    path: str | Path,
    image: np.ndarray | None = None,
    query: Query = None,
    head: int | None = None,
    batch: int = 0,
) -> Path:
    """Write a PNG grid of `layer`'s maps for one query (see `panels`); `image` (H, W[, 3]) in [0, 1] underneath."""
    plt = _pyplot()
    weights, titles = panels(layer, query, head, batch)
    cols = math.ceil(math.sqrt(len(titles)))
    rows = math.ceil(len(titles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows + 0.4), squeeze=False)
    point = _query_point(layer, query, batch)
    for index, ax in enumerate(axes.flat):
        if index >= len(titles):
            ax.axis("off")
            continue
        _draw_panel(ax, layer, weights[index], image, index if titles[0].startswith("head") else 0, batch)
        if point is not None and layer.keys.spatial:
            ax.plot(*point, marker="x", color="lime", markersize=8, mew=2)
        ax.set_title(titles[index], fontsize=8)
    where = "class token" if point is None and layer.queries.prefix else (
        f"query ({point[0]:.0f}, {point[1]:.0f})" if point else "")  # fmt: skip
    fig.suptitle(f"{layer.name}\n{layer.kind} {where}", fontsize=8)
    return save_figure(fig, path)


def image_for_display(images: Tensor, mean, std, batch: int = 0) -> np.ndarray:
    """Undo the normalisation of one image of a batch: (H, W) for one channel, (H, W, 3) otherwise, in [0, 1]."""
    x = images[batch].double().cpu()
    x = (
        x * torch.tensor(std, dtype=x.dtype)[: x.shape[0], None, None]
        + torch.tensor(mean, dtype=x.dtype)[: x.shape[0], None, None]
    )
    x = x.clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x[:3].permute(1, 2, 0).numpy()


def draw_patch_map(values: Tensor, path: str | Path, image: np.ndarray | None, title: str) -> Path:
    """One (h, w) map over the patch grid (rollout, relevance) drawn over the image."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    H, W = image.shape[:2] if image is not None else values.shape
    if image is not None:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=(0, W, H, 0))
    ax.imshow(values.double().numpy(), cmap="inferno", alpha=0.6 if image is not None else 1.0,
              extent=(0, W, H, 0), interpolation="nearest")  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    return save_figure(fig, path)
