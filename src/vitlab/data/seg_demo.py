"""`--data seg-demo`: a segmentation dataset made at load time from the shipped Fashion-MNIST subset.

Each 64x64 image is a textured background (a smooth two-colour gradient, a stripe pattern of random
frequency and direction, and pixel noise) with one to three real garments pasted at random
positions and sizes (24 to 44 pixels, from the 28x28 originals, bilinear). A garment's pixels are
those whose own resized intensity is at least `GARMENT_THRESHOLD` (40 of 255: Fashion-MNIST's
backgrounds are black and its garments brighter, so this keeps the garment's silhouette and drops
the fringe of interpolated dark pixels); only those pixels are pasted, tinted with a random colour,
so the mask is exact: the garment's class (1..10) where it was pasted, later garments over earlier
ones, and "background" (0) elsewhere. 11 classes.

Training images use the garments of the subset's training split, validation images those of its
test split; everything follows `seed` (fixed, so every run sees the same data), nothing big ships.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.data.segmentation import SegmentationDataset

SIDE = 64
GARMENT_THRESHOLD = 40
SIZES = {"train": 2000, "val": 300}


def texture(generator: torch.Generator, side: int = SIDE) -> Tensor:
    """A float (3, side, side) background in [0, 1]: gradient between two colours, stripes, noise."""
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    ys, xs = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    angle = float(rand(())) * 2 * math.pi
    ramp = (math.cos(angle) * xs + math.sin(angle) * ys + 1.5) / 3  # in [0, 1]
    low, high = rand(3, 1, 1), rand(3, 1, 1)
    base = low + (high - low) * ramp
    freq, direction, phase = 2 + 10 * float(rand(())), float(rand(())) * math.pi, float(rand(())) * 2 * math.pi
    stripes = torch.sin(2 * math.pi * freq * (math.cos(direction) * xs + math.sin(direction) * ys) + phase)
    image = base + 0.25 * float(rand(())) * stripes * rand(3, 1, 1) + 0.08 * (rand(3, side, side) - 0.5)
    return image.clamp(0, 1)


def compose(garments: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One uint8 image (3, 64, 64) and its uint8 mask from 1..3 garments drawn from `garments` (N, 28, 28)."""
    image = texture(generator)
    mask = torch.zeros(SIDE, SIDE, dtype=torch.uint8)
    count = int(torch.randint(1, 4, (), generator=generator))
    for _ in range(count):
        pick = int(torch.randint(0, len(garments), (), generator=generator))
        size = int(torch.randint(24, 45, (), generator=generator))
        top, left = (int(torch.randint(0, SIDE - size + 1, (), generator=generator)) for _ in range(2))
        garment = F.interpolate(garments[pick][None, None].float(), size=(size, size), mode="bilinear")[0, 0]
        if bool(torch.rand((), generator=generator) < 0.5):
            garment = garment.flip(-1)
        inside = garment >= GARMENT_THRESHOLD
        tint = 0.3 + 0.7 * torch.rand(3, 1, 1, generator=generator)
        region = image[:, top : top + size, left : left + size]
        region[:, inside] = (tint * (0.25 + 0.75 * garment / 255))[:, inside]
        mask[top : top + size, left : left + size][inside] = int(labels[pick]) + 1
    return (image * 255).round().to(torch.uint8), mask


def demo_segmentation(split: str, seed: int = 0) -> SegmentationDataset:
    """The `split` ("train" or "val") of the built-in segmentation demo (see the module docstring)."""
    from vitlab.data.datasets import demo_dataset

    source = demo_dataset("train" if split == "train" else "test")
    generator = torch.Generator().manual_seed(seed * 1009 + (0 if split == "train" else 1))
    garments, labels = source.images[:, 0], source.labels
    pairs = [compose(garments, labels, generator) for _ in range(SIZES[split])]
    images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    classes = ["background", *source.classes]
    return SegmentationDataset(classes, f"seg-demo ({split})", SIDE, images=images, masks=masks)
