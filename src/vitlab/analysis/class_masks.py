"""Segmenter's class masks as pictures: the mask transformer's patch-to-class-embedding products.

Segmenter's mask transformer (Strudel et al. 2021, section 3.2, eq. 1) ends with the scalar products
of the L2-normalised patch embeddings and class embeddings, Masks(z_M, c) = z_M c^T, one (h, w) map
per class over the patch grid; a LayerNorm over the classes (`mask_norm`) turns them into the
logits that are upsampled to the image. `record_class_masks` reads those products where they enter
`mask_norm` (a forward hook, so the model is untouched) and the area each class wins in the model's
output (the argmax of the upsampled logits, over the image's pixels); `draw_class_masks` draws one
panel per class over the image: by default the classes with the largest areas.

The products are cosines, in [-1, 1]; the panels share one colour scale (the range of the panels
shown), so that they compare. Only the mask decoder has class embeddings: the linear decoder's
class maps are its logits, which `vitlab predict` draws as a mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class ClassMasks:
    """`products` (batch, classes, h, w): eq. 1's cosines over the patch grid of the image padded to a
    multiple of the patch size (`cell` pixels a patch); `areas` (batch, classes): the fraction of the
    image's pixels where the class has the largest logit."""

    products: Tensor
    areas: Tensor
    image_size: tuple[int, int]
    cell: tuple[int, int]


def has_class_masks(model: nn.Module) -> bool:
    """Whether `model` is a Segmenter with the mask transformer (class embeddings)."""
    from vitlab.segmentation.segmenter import MaskTransformer, Segmenter

    return isinstance(model, Segmenter) and isinstance(model.decode_head, MaskTransformer)


@torch.no_grad()
def record_class_masks(model: nn.Module, images: Tensor) -> ClassMasks:
    """Run `model(images)` (eval mode) and keep the mask transformer's products and the classes' areas."""
    if not has_class_masks(model):
        raise ValueError(
            f"{type(model).__name__} has no class embeddings: class masks are Segmenter's mask transformer's "
            "(segmenter_*_mask); a linear decoder's class maps are its logits (`vitlab predict` draws them)"
        )
    seen: list[Tensor] = []
    handle = model.decode_head.mask_norm.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        logits = model(images)
    finally:
        handle.remove()
        model.train(was_training)
    patch = tuple(model.backbone.patch_size)
    grid = tuple(math.ceil(s / p) for s, p in zip(images.shape[-2:], patch, strict=True))
    products = seen[-1].transpose(1, 2).reshape(images.shape[0], -1, *grid)
    winners = logits.argmax(dim=1).flatten(1)  # (batch, pixels)
    counts = torch.zeros(images.shape[0], logits.shape[1], dtype=torch.float64)
    counts.scatter_add_(1, winners.cpu(), torch.ones(winners.shape, dtype=torch.float64))
    return ClassMasks(products.cpu(), counts / winners.shape[1], tuple(images.shape[-2:]), patch)


def pick_classes(masks: ClassMasks, classes: list[int] | None = None, top: int = 6, batch: int = 0) -> list[int]:
    """`classes` (checked against the model's), else the `top` classes by area, largest first (ties: lower index)."""
    count = masks.products.shape[1]
    if classes:
        bad = [c for c in classes if not 0 <= c < count]
        if bad:
            raise ValueError(f"--classes {bad} out of range: the model has {count} classes (0..{count - 1})")
        return list(classes)
    order = sorted(range(count), key=lambda c: (-float(masks.areas[batch, c]), c))
    return order[: max(1, top)]


def draw_class_masks(
    masks: ClassMasks,
    path: str | Path,
    image: np.ndarray | None = None,
    classes: list[int] | None = None,
    names: list[str] | None = None,
    batch: int = 0,
) -> Path:
    """Write a PNG: one panel per class of `classes` (default: the six largest), its products over the image."""
    from vitlab.analysis.draw import _pyplot, save_figure

    plt = _pyplot()
    classes = pick_classes(masks, classes, batch=batch)
    shown = masks.products[batch, classes].double()
    low, high = float(shown.min()), float(shown.max())
    cols = math.ceil(math.sqrt(len(classes)))
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows + 0.5), squeeze=False)
    (H, W), (ph, pw) = masks.image_size, masks.cell
    h, w = shown.shape[-2:]
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(classes):
            continue
        c = classes[index]
        if image is not None:
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=(0, W, H, 0))
        ax.imshow(shown[index].numpy(), cmap="inferno", vmin=low, vmax=high, alpha=0.6 if image is not None else 1.0,
                  extent=(0, w * pw, h * ph, 0), interpolation="nearest")  # fmt: skip
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        label = names[c] if names and c < len(names) else f"class {c}"
        ax.set_title(f"{label}: {100 * float(masks.areas[batch, c]):.1f}% of pixels", fontsize=8)
    fig.suptitle(
        "Segmenter class masks: cos(patch, class embedding) (eq. 1, before mask_norm)\n"
        f"one colour scale, {low:.3f} to {high:.3f}",
        fontsize=8,
    )
    return save_figure(fig, path)
