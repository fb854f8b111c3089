"""Evaluation preprocessing: resize, centre crop, normalise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

_PIL_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def eval_transform(
    image: Image.Image,
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
) -> Tensor:
    """The standard ImageNet evaluation: resize the short side to size / crop_pct, centre-crop, normalise.

    Returns a float (3, H, W) tensor.
    """
    height, width = (size, size) if isinstance(size, int) else size
    scale_size = math.floor(min(height, width) / crop_pct)
    w, h = image.size
    if w < h:
        new_w, new_h = scale_size, max(1, round(h * scale_size / w))
    else:
        new_w, new_h = max(1, round(w * scale_size / h)), scale_size
    image = image.resize((new_w, new_h), _PIL_INTERPOLATION[interpolation])
    left, top = round((new_w - width) / 2), round((new_h - height) / 2)
    image = image.crop((left, top, left + width, top + height))
    return normalize(to_tensor(image), mean, std)


def to_tensor(image: Image.Image) -> Tensor:
    """An RGB PIL image as a float (3, H, W) tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean_t) / std_t
