"""Pictures of segmentations: a colour per class, palette PNG masks, overlays with a legend, and the
grid of validation predictions a training run writes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vitlab.segmentation.base import IGNORE_INDEX


def palette(count: int = 256) -> np.ndarray:
    """(count, 3) uint8 colours: Pascal VOC's colour map (the bits of the index spread over R, G, B, high
    bits first), so class 0 is black, 1 dark red, 2 dark green...; 255 (ignored) is VOC's light beige."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for index in range(count):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[index] = (r, g, b)
    return colours


def save_palette_png(mask: np.ndarray, path: str | Path) -> None:
    """A (H, W) label array as a palette PNG: the pixel values are the labels, the colours VOC's."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(palette().flatten().tolist())
    image.save(path)


def colourise(mask: np.ndarray) -> np.ndarray:
    return palette()[mask.astype(np.int64).clip(0, 255)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 (H, W, 3) image with the class colours blended in (ignored pixels left as they are)."""
    blended = image.astype(np.float64) * (1 - alpha) + colourise(mask).astype(np.float64) * alpha
    blended = np.where((mask == IGNORE_INDEX)[..., None], image, blended)
    return blended.round().clip(0, 255).astype(np.uint8)


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _legend_handles(labels: Sequence[int], classes: Sequence[str]):
    from matplotlib.patches import Patch

    colours = palette()
    return [Patch(color=colours[k] / 255, label=classes[k] if k < len(classes) else str(k)) for k in labels]


def overlay_figure(image: np.ndarray, mask: np.ndarray, classes: Sequence[str], title: str = "") -> bytes:
    """PNG bytes: the image beside the mask overlaid on it, with a legend of the classes present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [int(k) for k in np.unique(mask) if k != IGNORE_INDEX]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(overlay(image, mask))
    axes[1].set_title(title or "prediction", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.legend(handles=_legend_handles(present, classes), loc="lower center", ncol=min(5, max(1, len(present))),
               fontsize=8, frameon=False)  # fmt: skip
    fig.subplots_adjust(bottom=0.12 + 0.04 * (len(present) // 5))
    data = _figure_png(fig)
    plt.close(fig)
    return data


def predictions_figure(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], preds: Sequence[np.ndarray], classes: Sequence[str]
) -> bytes:
    """PNG bytes: a column per image (uint8 (H, W, 3)): the image, the true mask, the predicted mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    fig, axes = plt.subplots(3, count, figsize=(1.9 * count, 6.2), squeeze=False)
    for i in range(count):
        views = [(images[i], "image"), (overlay(images[i], labels[i], 0.7), "truth")]
        views.append((overlay(images[i], preds[i], 0.7), "prediction"))
        for row, (picture, name) in enumerate(views):
            axes[row, i].imshow(picture)
            axes[row, i].axis("off")
            if i == 0:
                axes[row, i].set_title(name, fontsize=8, loc="left")
    values = np.concatenate([m.ravel() for m in [*labels, *preds]])
    present = sorted(int(k) for k in np.unique(values) if k != IGNORE_INDEX)
    fig.legend(handles=_legend_handles(present, classes), loc="lower center", ncol=min(6, max(1, len(present))),
               fontsize=7, frameon=False)  # fmt: skip
    data = _figure_png(fig)
    plt.close(fig)
    return data
