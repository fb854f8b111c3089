"""The one evaluation preprocessing, shared by `vitlab eval` (image folders) and `vitlab predict` (files)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from vitlab.data.arrays import guard_workers
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


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder becomes its image files (by suffix, recursively, in sorted order)."""
    from vitlab.data.images import IMAGE_SUFFIXES

    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        else:
            found.append(path)
    return found


class _Files(torch.utils.data.Dataset):
    """Files decoded at the evaluation load size; an unreadable one gives its reason instead of a tensor."""

    def __init__(self, paths: Sequence[Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, Tensor | None, str | None]:
        from vitlab.data.images import BadImageError

        try:
            return str(self.paths[index]), load_fixed_size(self.paths[index], self.size), None
        except BadImageError as err:
            return str(self.paths[index]), None, err.reason


def _as_list(items: list) -> list:
    return items


def stream_files(
    paths: Sequence[Path],
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.875,
    channels: int = 3,
    batch_size: int = 32,
    workers: int = 0,
    skipped: list[str] | None = None,
) -> Iterator[tuple[list[str], Tensor]]:
    """`preprocess_files` batch by batch, so that memory stays bounded however many files there are.

    Yields (paths, float batch) of at most `batch_size` images, decoded by `workers` processes. A file
    that cannot be read raises BadImageError naming it, or with a `skipped` list is left out and
    its path appended.
    """
    from vitlab.data.images import SKIP_HINT, BadImageError

    preprocess = EvalPreprocess(img_size, mean, std, channels)
    loader = torch.utils.data.DataLoader(
        _Files(paths, eval_load_size(img_size, crop_pct)), batch_size=batch_size, num_workers=workers,
        collate_fn=_as_list,
    )  # fmt: skip
    for items in guard_workers(loader, "the images to predict"):
        good = [(path, image) for path, image, _ in items if image is not None]
        for path, _, error in items:
            if error is not None and skipped is None:
                raise BadImageError(path, error + SKIP_HINT)
            if error is not None:
                skipped.append(path)
        if good:
            yield [path for path, _ in good], preprocess(torch.stack([image for _, image in good]))
