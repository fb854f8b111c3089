"""Images held in memory, and the error every dataset raises."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


class DatasetError(ValueError):
    """A dataset that cannot be used: missing or empty folders, truncated files, bad labels."""


class WorkerDiedError(DatasetError):
    """A data-loading worker process died (killed by the kernel, a signal, a crash in a decoder)."""


def guard_workers(batches: Iterable[Any], source: str) -> Iterator[Any]:
    """The items of a DataLoader; a worker that dies becomes one clear WorkerDiedError, not a hang or a
    traceback from inside torch (which notices a dead worker through its SIGCHLD handler)."""
    with workers_watched(source):
        yield from batches


@contextmanager
def workers_watched(source: str = "the data") -> Iterator[None]:
    """Torch's SIGCHLD handler raises a dead worker's RuntimeError wherever the main process is (in an
    optimiser step, a forward pass): this turns it into WorkerDiedError around any such code."""
    try:
        yield
    except RuntimeError as err:
        if "DataLoader worker" not in str(err):
            raise
        raise WorkerDiedError(
            f"a data-loading worker died while reading {source} ({str(err).splitlines()[0]}); the usual cause "
            "is the machine running out of memory: lower --workers or --batch-size, then resume the run"
        ) from err


def check_labels(labels: Tensor, num_classes: int, source: str) -> None:
    if len(labels) == 0:
        return
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if len(bad):
        first = int(bad[0])
        raise DatasetError(
            f"{source}: label {int(labels[first])} of item {first} is out of range for {num_classes} classes "
            f"({len(bad)} labels out of range); labels must be 0..{num_classes - 1}"
        )


class ArrayDataset:
    """Images held in memory: uint8 `images` (N, C, H, W) and int64 `labels` (N,)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], source: str):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DatasetError(
                f"{source}: expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise DatasetError(f"{source}: {len(images)} images but {len(labels)} labels")
        check_labels(labels, len(classes), source)
        self.images, self.labels = images, labels.long()
        self.classes, self.source = list(classes), source
        self.channels, self.size = images.shape[1], (images.shape[2], images.shape[3])

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.images[indices], self.labels[indices]

    def subset(self, indices: Tensor, source: str) -> ArrayDataset:
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes, source)
