"""Building what a run trains on and with: the data splits, the model, the teacher, the optimiser."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.data.arrays import ArrayDataset
from vitlab.data.datasets import KNOWN_DATASETS, DataSplits, ImageFolderDataset, build_datasets, materialize
from vitlab.data.folders import balanced_subset
from vitlab.data.transforms import eval_load_size
from vitlab.registry import ModelEntry, create_model
from vitlab.train.config import ConfigError, TrainConfig
from vitlab.train.distributed import DistInfo
from vitlab.train.optim import param_groups
from vitlab.train.tasks.classification import Teacher


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_seed(seed: int, rank: int) -> int:
    """The seed of a process's data and augmentation randomness: its own, unlike the model's initial weights."""
    return seed * 7919 + rank + 1


def training_subset(
    train: ArrayDataset | ImageFolderDataset, count: int, seed: int
) -> ArrayDataset | ImageFolderDataset:
    """`count` class-balanced images of the training split, the same for every model run with `seed`."""
    if count > len(train):
        raise ConfigError(f"--train-images {count} is more than the {len(train)} training images of {train.source}")
    chosen = balanced_subset(train.labels.tolist(), count, seed)
    return train.subset(torch.tensor(chosen), f"{train.source} ({count} images drawn with seed {seed})")


def load_data(
    config: TrainConfig, entry: ModelEntry, info: DistInfo, progress: bool, log: Callable[[str], None]
) -> tuple[DataSplits, int, list[str]]:
    """The splits, checked (every folder image decoded once, unless --no-check-images), the input size and
    the files skipped as unreadable."""
    img_size = config.img_size
    if img_size is None and config.data.lower() not in KNOWN_DATASETS:
        img_size = entry.preprocess.img_size
    load_size = eval_load_size(img_size, entry.preprocess.crop_pct) if img_size else 1  # arrays keep their size
    data = build_datasets(config.data, config.data_dir, load_size, config.val_fraction, config.holdout)
    if config.train_images is not None:
        data.train = training_subset(data.train, config.train_images, config.seed)
    img_size = img_size or data.train.size[0]
    skipped: list[str] = []
    if isinstance(data.train, ImageFolderDataset) and config.check_images:
        checked: dict[int, Any] = {}
        for split in ("train", "val", "test"):
            dataset = getattr(data, split)
            if id(dataset) not in checked:
                checked[id(dataset)], bad = materialize(
                    dataset, config.workers, config.skip_bad_images, progress=progress
                )
                skipped += bad
            setattr(data, split, checked[id(dataset)])
    if skipped:
        log(f"skipped {len(skipped)} unreadable images (see summary.json)")
    if config.batch_size % (info.world_size * config.accum_steps):
        raise ConfigError(
            f"batch size {config.batch_size} does not split over {info.world_size} processes x "
            f"{config.accum_steps} accumulation steps"
        )
    if config.batch_size > len(data.train):
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the training set ({len(data.train)} images of "
            f"{data.name}); lower --batch-size"
        )
    return data, img_size, skipped


def build_model(
    config: TrainConfig, num_classes: int, img_size: int, load_pretrained: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The student, and the constructor arguments that rebuild it (stored with the final weights)."""
    args = {**config.model_args, "num_classes": num_classes}
    args.setdefault("img_size", img_size)
    if config.drop_path is not None:
        args["drop_path_rate"] = config.drop_path
    try:
        pretrained = config.pretrained if load_pretrained and config.pretrained else False
        model = create_model(config.model, pretrained=pretrained, **args)
    except TypeError as err:
        raise ConfigError(f"model {config.model} does not take these arguments {sorted(args)}: {err}") from err
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, args


def build_teacher(config: TrainConfig, num_classes: int, student: nn.Module, device: torch.device) -> Teacher | None:
    """The frozen teacher, fed the student's input under the teacher's own normalisation."""
    if not config.teacher:
        return None
    if not config.teacher_checkpoint:
        raise ConfigError("a teacher needs its trained weights: pass --teacher-checkpoint PATH")
    # Strict: the file's own architecture and class count, or an error for another model.
    model = create_model(config.teacher, pretrained=config.teacher_checkpoint, **config.teacher_args)
    if model.num_classes != num_classes:
        raise ConfigError(
            f"the teacher {config.teacher_checkpoint} has {model.num_classes} classes, the data {num_classes}"
        )
    if model.in_chans != student.in_chans:
        raise ConfigError(f"the teacher takes {model.in_chans} channels, the student {student.in_chans}")
    model.eval().requires_grad_(False).to(device)
    ours, theirs = student.entry.preprocess, model.entry.preprocess

    def stats(pre) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = torch.tensor(pre.mean), torch.tensor(pre.std)
        if student.in_chans != len(mean):  # a single-channel model uses the average statistics
            mean, std = mean.mean().expand(student.in_chans), std.mean().expand(student.in_chans)
        return mean.view(1, -1, 1, 1).to(device), std.view(1, -1, 1, 1).to(device)

    (s_mean, s_std), (t_mean, t_std) = stats(ours), stats(theirs)
    return Teacher(model, s_std / t_std, (s_mean - t_mean) / t_std)


def build_optimizer(config: TrainConfig, model: nn.Module, extra: nn.Module | None, device: torch.device):
    head = model.head_parameter_names() if hasattr(model, "head_parameter_names") else []
    groups = param_groups(
        model, config.weight_decay, config.layer_decay, [extra] if extra is not None else [], head, config.head_lr_mult
    )
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.effective_lr(), momentum=config.momentum)
    # The fused kernel updates all parameters at once: a small model trains 12% faster per step on CPU than
    # with the default per-parameter loop.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.effective_lr(), betas=config.opt_betas, eps=config.opt_eps, fused=fused)
