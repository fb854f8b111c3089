"""Tiny image/mask folders for the segmentation tests: shapes whose colour says their class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vitlab.segmentation.visualize import palette

COLOURS = np.array([[40, 40, 40], [220, 60, 60], [60, 80, 220], [60, 200, 60]])


def pair(rng: np.random.Generator, height: int, width: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of a grey background with a rectangle and a disc of random classes, and its mask; the
    rectangle's outline is labelled 255 (ignored), as VOC's borders."""
    mask = np.zeros((height, width), np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    bottom, right = top + rng.integers(4, height // 2 + 1), left + rng.integers(4, width // 2 + 1)
    mask[top:bottom, left:right] = rng.integers(1, classes)
    ys, xs = np.indices((height, width))
    cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(3, max(4, min(height, width) // 3))
    disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
    mask[disc] = rng.integers(1, classes)
    image = COLOURS[mask % len(COLOURS)] + rng.integers(-20, 21, (height, width, 3))
    border = np.zeros_like(disc)
    border[top:bottom, left] = border[top:bottom, right - 1] = True
    mask[border & ~disc] = 255
    return image.clip(0, 255).astype(np.uint8), mask


def save_mask(mask: np.ndarray, path: Path, kind: str = "palette") -> None:
    image = Image.fromarray(mask, mode="L")
    if kind == "palette":
        image = Image.fromarray(mask, mode="P")
        image.putpalette(palette().flatten().tolist())
    image.save(path)


def write_folder(
    root: Path, train: int = 16, val: int = 8, size: tuple[int, int] = (24, 24), classes: int = 4, names: bool = True
) -> Path:
    """`root/{train,val}/{images,masks}` of `classes` classes (class 0 the background)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = pair(rng, *size, classes)
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            save_mask(mask, root / split / "masks" / f"{i:03d}.png", "palette" if i % 2 else "gray")
    if names:
        (root / "classes.json").write_text(json.dumps(["background", "red", "blue", "green"][:classes]))
    return root


def train_args(data: Path, output: Path, *extra: str, epochs: int = 2, batch: int = 4) -> list[str]:
    return [
        "train", "--model", "toy_seg", "--data", str(data), "--output", str(output), "--epochs", str(epochs),
        "--batch-size", str(batch), "--lr", "1e-2", "--lr-scaling", "none", "--warmup-epochs", "0.5",
        "--img-size", "24", "--crop-size", "16", "--workers", "0", "--progress", "off", "--schedule", "poly",
        *extra,
    ]  # fmt: skip
