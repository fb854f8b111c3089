"""Sequence-to-sequence on image strips: teacher-forced label-smoothed loss, greedy-decoded accuracy.

The run's `--data` names an IDX dataset (demo, mnist, fashion-mnist); `strip_splits` turns its
splits into strips of `strip_min`..`strip_max` images (`vitlab.seq2seq.data.StripDataset`):
`strips` of them from the training images (default: as many as the training images / the mean
strip length) and, for validation and test, strips made only of the test split's images (or of
the held-out training images with `--holdout`). The model is any registered image-to-sequence
variant; its `max_images` is `strip_max`.

Metrics, from greedy decoding: `seq_acc`, the percentage of strips whose whole label sequence
(and its end) is right; `token_acc`, the percentage of labels right at their position; `loss`,
the teacher-forced cross-entropy without smoothing.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.data.loader import eval_batches
from vitlab.seq2seq.base import EOS, PAD, label_smoothed_loss
from vitlab.seq2seq.data import StripDataset
from vitlab.seq2seq.decoding import greedy_decode
from vitlab.train.config import ConfigError, TrainConfig
from vitlab.train.distributed import DistInfo, all_reduce_sum
from vitlab.train.tasks import Task

TEST_SEED_OFFSET = 1_000_003  # test strips are drawn with another seed than the training strips


def strip_splits(data: Any, config: TrainConfig) -> Any:
    """The run's image splits (`DataSplits`) turned into strips; the same object, its splits replaced."""
    low, high = config.strip_min, config.strip_max
    if not 1 <= low <= high:
        raise ConfigError(f"strip_min and strip_max must satisfy 1 <= strip_min <= strip_max, got {low} and {high}")
    mean = (low + high) / 2
    made: dict[int, StripDataset] = {}

    def strips(images, count: int, seed: int, what: str) -> StripDataset:
        if id(images) not in made:
            made[id(images)] = StripDataset(
                images, count, low, high, seed, f"{what} of {low}-{high} images from {images.source}"
            )
        return made[id(images)]

    train_count = config.strips or max(1, int(len(data.train) / mean))
    data.train = strips(data.train, train_count, config.seed, f"{train_count} strips")
    for split in ("val", "test"):
        images = getattr(data, split)
        count = max(1, int(len(images) / mean))
        setattr(data, split, strips(images, count, config.seed + TEST_SEED_OFFSET, f"{count} strips"))
    data.notes.append(f"strips of {low} to {high} images; evaluation strips are made only from evaluation images")
    return data


class Seq2SeqTask(Task):
    """What one micro-batch of strips and label sequences costs, and greedy-decoded accuracy."""

    selection_metric = "seq_acc"

    def __init__(self, config: TrainConfig, model: nn.Module, info: DistInfo, progress: bool = False):
        if getattr(model, "task", None) != "sequence-to-sequence" or not hasattr(model, "strip_size"):
            raise ConfigError(f"{config.model} is not an image-to-sequence model (e.g. image_to_sequence_vit)")
        if model.max_images < config.strip_max:
            raise ConfigError(f"{config.model} reads strips of at most {model.max_images} images; strip_max is "
                              f"{config.strip_max} (pass model_args max_images)")  # fmt: skip
        pre, channels = model.entry.preprocess, model.in_chans
        mean, std = torch.tensor(pre.mean), torch.tensor(pre.std)
        if len(mean) != channels:
            mean, std = mean.mean().expand(channels), std.mean().expand(channels)
        self.mean, self.std = mean.view(1, -1, 1, 1).to(info.device), std.view(1, -1, 1, 1).to(info.device)
        self.config, self.info, self.progress = config, info, progress
        self.width = model.strip_size[1]
        per_process = max(1, config.batch_size // (info.world_size * config.accum_steps))
        self.eval_batch_size = config.eval_batch_size or per_process

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 strips to normalised floats, right-padded with blank to the width the model is built for."""
        x = images.to(self.info.device, non_blocking=True).float().div_(255.0)
        if x.shape[-1] < self.width:
            x = F.pad(x, (0, self.width - x.shape[-1]))
        return (x - self.mean) / self.std

    def train_module(self, model: nn.Module) -> nn.Module:
        return model

    def loss(self, module: nn.Module, images: Tensor, labels: Tensor, amp: AbstractContextManager) -> Tensor:
        tokens = labels.to(self.info.device)
        with amp:
            logits = module(self.prepare(images), tokens[:, :-1])
        return label_smoothed_loss(logits.float(), tokens[:, 1:], self.config.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, amp: AbstractContextManager, desc: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        totals = torch.zeros(
            6, dtype=torch.float64
        )  # loss sum, loss tokens, right sequences, sequences, right labels, labels
        info = self.info
        batches = eval_batches(dataset, self.eval_batch_size, info.rank, info.world_size, self.config.workers)
        if self.progress:
            from tqdm import tqdm

            total = math.ceil(math.ceil(len(dataset) / info.world_size) / self.eval_batch_size)
            batches = tqdm(batches, total=total, desc=desc, leave=False)
        for images, labels in batches:
            x, tokens = self.prepare(images), labels.to(info.device)
            with amp:
                logits = model(x, tokens[:, :-1]).float()
                predicted = greedy_decode(model, x, max_len=tokens.shape[1] - 1)
            totals += torch.tensor(
                [*sequence_losses(logits, tokens[:, 1:]), *sequence_scores(predicted, tokens[:, 1:])]
            )
        totals = all_reduce_sum(totals, info).cpu()
        model.train(was_training)
        return {
            "loss": totals[0].item() / max(totals[1].item(), 1.0),
            "seq_acc": 100.0 * totals[2].item() / max(totals[3].item(), 1.0),
            "token_acc": 100.0 * totals[4].item() / max(totals[5].item(), 1.0),
        }


def sequence_losses(logits: Tensor, targets: Tensor) -> tuple[float, float]:
    """Summed cross-entropy over the non-padding target positions, and their count."""
    keep = targets != PAD
    loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return float((loss * keep).sum()), float(keep.sum())


def sequence_scores(predicted: Tensor, targets: Tensor) -> tuple[float, float, float, float]:
    """(sequences right, sequences, labels right at their position, labels) of greedy outputs against
    `targets` (labels, EOS, PAD...). A sequence is right when its labels and its EOS are."""
    width = targets.shape[1]
    if predicted.shape[1] < width:
        predicted = F.pad(predicted, (0, width - predicted.shape[1]), value=PAD)
    predicted = predicted[:, :width]
    ends = targets == EOS
    until_end = ends.long().cumsum(dim=1) - ends.long() == 0  # labels and the EOS itself
    right = (predicted == targets) | ~until_end
    labels = until_end & ~ends
    return (float(right.all(dim=1).sum()), float(len(targets)), float(((predicted == targets) & labels).sum()),
            float(labels.sum()))  # fmt: skip
