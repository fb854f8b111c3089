"""The one evaluation preprocessing, shared by `vitlab eval` (image folders) and `vitlab predict` (files)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from vitlab.data.augment import EvalPreprocess
from vitlab.data.folders import load_fixed_size


def eval_load_size(img_size: int, crop_pct: float) -> int:
    """The side images are decoded at before the centre crop of `img_size`: img_size / crop_pct, rounded up."""
    return math.ceil(img_size / crop_pct)


def preprocess_files(
    paths: Sequence[str | Path],
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.875,
    channels: int = 3,
) -> Tensor:
    """A batch of image files prepared exactly as `vitlab eval` prepares an image folder.

    Each file is decoded as RGB, its short side resized (bicubic) to `eval_load_size` and a square
    centre-cropped (what the folder dataset stores); the batch is then centre-cropped to `img_size`
    and normalised (what evaluation does to every batch). Returns float (N, channels, img_size, img_size).
    """
    size = eval_load_size(img_size, crop_pct)
    batch = torch.stack([load_fixed_size(Path(p), size) for p in paths])
    return EvalPreprocess(img_size, mean, std, channels)(batch)
