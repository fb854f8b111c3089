"""Pictures of a run: loss and accuracy curves, and attention maps drawn over the images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from torch import Tensor

from vitlab.train.checkpoint import atomic_write_bytes


def _figure_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training and validation loss (left) and the validation metrics (right: top-1 / top-5, mIoU / mAcc /
    aAcc, or a sequence task's) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [row["train_loss"] for row in history], "o-", label="train (with augmentation)")
    validated = [row for row in history if "val_loss" in row]  # every epoch unless --val-every N
    val_epochs = [row["epoch"] for row in validated]
    left.plot(val_epochs, [row["val_loss"] for row in validated], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    if "val_miou" in validated[0]:  # segmentation
        for key, label in (("val_miou", "mIoU"), ("val_macc", "mAcc"), ("val_aacc", "aAcc")):
            right.plot(val_epochs, [row[key] for row in validated], "o-", label=label)
        right.set(xlabel="epoch", ylabel="%", title="validation mIoU and accuracy")
    else:
        for key in [k for k in validated[0] if k.startswith("val_") and k != "val_loss"]:  # top1, top5 / seq_acc
            right.plot(val_epochs, [row[key] for row in validated], "o-", label=key[4:].replace("top", "top-"))
        if "ema_val_top1" in validated[0]:
            right.plot(val_epochs, [row["ema_val_top1"] for row in validated], "o--", label="EMA top-1")
        right.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    atomic_write_bytes(path, _figure_bytes(fig))
    plt.close(fig)


def plot_attention(
    images: Tensor, attention: Tensor, titles: list[str], path: Path, caption: str = "class-token attention"
) -> None:
    """Each image (float (B, C, H, W) in [0, 1]) above its attention map, upsampled to the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    count = len(images)
    fig, axes = plt.subplots(2, count, figsize=(1.9 * count, 4.2), squeeze=False)
    heat = F.interpolate(attention[:, None], size=images.shape[-2:], mode="nearest")[:, 0]
    for i in range(count):
        picture = images[i].permute(1, 2, 0).cpu()
        gray = picture.shape[-1] == 1 or bool((picture[..., 0] == picture[..., -1]).all())
        shown = picture[..., 0] if gray else picture
        axes[0, i].imshow(shown, cmap="gray" if gray else None)
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[1, i].imshow(shown, cmap="gray" if gray else None)
        axes[1, i].imshow(heat[i].cpu(), cmap="inferno", alpha=0.6)
        for row in (0, 1):
            axes[row, i].axis("off")
    fig.suptitle(caption, fontsize=10)
    atomic_write_bytes(path, _figure_bytes(fig))
    plt.close(fig)
