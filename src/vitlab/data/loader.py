"""Deterministic batches: the order of an epoch is a function of (seed, epoch) only.

That is what makes a resumed run replay exactly the batches an uninterrupted run would see,
and what lets N processes split each global batch between them so that together they see the
same images as one process with the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from vitlab.data.arrays import guard_workers
from vitlab.data.datasets import ArrayDataset, ImageFolderDataset, load_fixed_size
from vitlab.data.images import SKIP_HINT, BadImageError

Dataset = ArrayDataset | ImageFolderDataset


def epoch_order(num_items: int, seed: int, epoch: int, repeats: int = 1) -> Tensor:
    """The permutation of an epoch. With `repeats` > 1 (repeated augmentation, Hoffer et al. 2020)
    each image appears `repeats` times in a row and the epoch keeps its length, so it covers
    num_items / repeats distinct images; consecutive copies go to different processes.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator)
    if repeats > 1:
        order = order.repeat_interleave(repeats)[:num_items]
    return order


def local_indices(global_batch: Tensor, rank: int, world_size: int, accum_steps: int, micro: int) -> Tensor:
    """The images of one process and one accumulation step: rank-strided, then split in `accum_steps` chunks."""
    mine = global_batch[rank::world_size]
    return mine.chunk(accum_steps)[micro] if accum_steps > 1 else mine


def train_batches(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    accum_steps: int = 1,
    repeats: int = 1,
    workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The (uint8 images, labels) micro-batches of this process for the steps `start_step` onwards of `epoch`.

    Each optimiser step of `batch_size` images yields `accum_steps` micro-batches; the last
    incomplete global batch of the epoch is dropped.
    """
    order = epoch_order(len(dataset), seed, epoch, repeats)
    steps = len(dataset) // batch_size
    plan = [
        local_indices(order[s * batch_size : (s + 1) * batch_size], rank, world_size, accum_steps, micro)
        for s in range(start_step, steps)
        for micro in range(accum_steps)
    ]
    yield from load(dataset, plan, workers)


def eval_batches(
    dataset: Dataset,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    skipped: list[str] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Every image once, in order; with several processes each takes every world_size-th image.
    With a `skipped` list, unreadable files are left out of their batch and their paths appended."""
    indices = torch.arange(rank, len(dataset), world_size)
    yield from load(dataset, list(indices.split(batch_size)), workers, skipped)


def load(
    dataset: Dataset, plan: list[Tensor], workers: int, skipped: list[str] | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of `plan` (lists of indices); a file that cannot be decoded raises BadImageError here,
    in the main process, naming the file (an error raised inside a worker would lose its type). With a
    `skipped` list, such a file is left out of its batch instead and its path appended to the list.
    """
    if hasattr(dataset, "batches"):  # a segmentation dataset forms its own (image, mask) batches
        yield from dataset.batches(plan, workers)
        return
    if isinstance(dataset, ArrayDataset):
        for indices in plan:
            yield dataset.get_batch(indices)
        return
    loader = torch.utils.data.DataLoader(
        _Decoded(dataset),
        batch_sampler=[p.tolist() for p in plan],
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),  # the main RNG streams stay untouched
    )
    for images, labels, errors in guard_workers(loader, dataset.source):
        if errors and skipped is None:
            raise BadImageError(errors[0][0], errors[0][1] + SKIP_HINT)
        if errors:
            skipped += [path for path, _ in errors]
        if images is not None:
            yield images, labels


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageFolderDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, str, str | None]:
        path = self.dataset.files[index]
        try:
            return load_fixed_size(path, self.dataset.size[0]), int(self.dataset.labels[index]), str(path), None
        except BadImageError as err:
            return None, int(self.dataset.labels[index]), str(path), err.reason


def _collate(items: list) -> tuple[Tensor | None, Tensor | None, list[tuple[str, str]]]:
    """The readable items stacked (None when there are none) and the (path, reason) of the others."""
    errors = [(path, error) for _, _, path, error in items if error is not None]
    good = [item for item in items if item[3] is None]
    if not good:
        return None, None, errors
    return torch.stack([item[0] for item in good]), torch.tensor([item[1] for item in good]), errors


def steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
    return len(dataset) // batch_size
