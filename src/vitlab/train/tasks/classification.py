"""Image classification: augmentation, Mixup/CutMix, label smoothing, DeiT distillation, the patch
diversification losses, and top-1 / top-5 evaluation."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.data.augment import EvalPreprocess, Mixup, TrainAugment
from vitlab.data.loader import eval_batches
from vitlab.train.config import ConfigError, TrainConfig
from vitlab.train.distributed import DistInfo, all_reduce_sum
from vitlab.train.losses import (
    DistillationLoss,
    PatchMixingLoss,
    patch_contrastive_loss,
    patch_cosine_loss,
    soft_target_cross_entropy,
)
from vitlab.train.tasks import Task


class ClassifierWithPatchLosses(nn.Module):
    """The model plus the patch-mixing head, one module for DDP; returns (logits, first, last patch tokens)."""

    def __init__(self, model: nn.Module, mixing: PatchMixingLoss | None, need_patches: bool):
        super().__init__()
        self.model, self.mixing, self.need_patches = model, mixing, need_patches

    def forward(self, x: Tensor) -> tuple[Any, Tensor | None, Tensor | None]:
        if not self.need_patches:
            return self.model(x), None, None
        return self.model.forward_patch_tokens(x)


@dataclass
class Teacher:
    """A frozen teacher and the affine map from the student's normalised input to the teacher's."""

    model: nn.Module
    scale: Tensor
    shift: Tensor

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return self.model(x * self.scale + self.shift).float()


class Evaluator:
    """Loss, top-1 and top-5 of a model on a dataset, summed exactly over the processes."""

    def __init__(
        self, preprocess: nn.Module, batch_size: int, info: DistInfo, workers: int, progress: bool,
        skip_bad: bool = False,
    ):  # fmt: skip
        self.preprocess, self.batch_size, self.info = preprocess, batch_size, info
        self.workers, self.progress = workers, progress
        self.skipped: list[str] | None = [] if skip_bad else None  # unreadable files left out (skip_bad)

    @torch.no_grad()
    def __call__(self, model: nn.Module, dataset, amp: AbstractContextManager, desc: str = "eval") -> dict:
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1, top-5, count
        batches = eval_batches(
            dataset, self.batch_size, self.info.rank, self.info.world_size, self.workers, self.skipped
        )
        if self.progress:
            from tqdm import tqdm

            per_rank = math.ceil(len(dataset) / self.info.world_size)
            batches = tqdm(batches, total=math.ceil(per_rank / self.batch_size), desc=desc, leave=False)
        for images, labels in batches:
            images = self.preprocess(images.to(self.info.device, non_blocking=True))
            labels = labels.to(self.info.device)
            with amp:
                logits = model(images)
            logits = logits.float()
            hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == labels[:, None]
            loss = F.cross_entropy(logits, labels, reduction="sum")
            totals += torch.tensor([loss.item(), hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), len(labels)])
        totals = all_reduce_sum(totals, self.info).cpu()
        model.train(was_training)
        count = max(totals[3].item(), 1.0)
        return {
            "loss": totals[0].item() / count,
            "top1": 100.0 * totals[1].item() / count,
            "top5": 100.0 * totals[2].item() / count,
        }


class ClassificationTask(Task):
    """What one micro-batch of images and labels costs, under the run's augmentation and losses."""

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        num_classes: int,
        img_size: int,
        info: DistInfo,
        teacher: Teacher | None = None,
        progress: bool = False,
    ):
        pre = model.entry.preprocess
        device, channels = info.device, model.in_chans
        self.config, self.teacher = config, teacher
        self.need_patches = config.patch_cosine > 0 or config.patch_contrastive > 0 or config.patch_mixing > 0
        if self.need_patches and not model.has_patch_tokens:
            raise ConfigError(
                f"the patch diversification losses (--patch-cosine, --patch-contrastive, --patch-mixing) read patch "
                f"tokens; {type(model).__name__} has none (its features are a {model.feature_format} map)"
            )
        if config.patch_mixing > 0 and config.cutmix <= 0:
            raise ConfigError("--patch-mixing classifies the patches CutMix pastes: it needs --cutmix > 0")
        self.mixing = PatchMixingLoss(model.embed_dim, num_classes).to(device) if config.patch_mixing > 0 else None
        if teacher is not None and config.distillation == "none":
            raise ConfigError("a teacher was given but --distillation is none: pick soft or hard")
        self.distill = (
            DistillationLoss(config.distillation, config.distillation_alpha, config.distillation_tau)
            if teacher is not None
            else None
        )
        patch = model.patch_size[0] if model.patch_size else 1
        self.mixup = Mixup(
            num_classes, config.mixup, config.cutmix, config.mixup_prob, config.mixup_switch_prob,
            config.label_smoothing, patch_size=patch,
        )  # fmt: skip
        self.augment = TrainAugment(
            img_size, pre.mean, pre.std, channels, config.crop, config.scale, config.ratio, config.crop_padding,
            config.hflip, config.color_jitter, config.rand_augment, config.reprob,
        ).to(device)  # fmt: skip
        per_process = max(1, config.batch_size // (info.world_size * config.accum_steps))
        self.preprocess = EvalPreprocess(img_size, pre.mean, pre.std, channels).to(device)
        self.evaluator = Evaluator(
            self.preprocess, config.eval_batch_size or per_process, info, config.workers, progress
        )
        self.device = device

    @property
    def extra_module(self) -> nn.Module | None:
        return self.mixing

    def train_module(self, model: nn.Module) -> nn.Module:
        return ClassifierWithPatchLosses(model, self.mixing, self.need_patches).to(self.device)

    def loss(self, module: nn.Module, images: Tensor, labels: Tensor, amp: AbstractContextManager) -> Tensor:
        x = self.augment(images.to(self.device, non_blocking=True))
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, targets, patch_targets = self.mixup(x, labels.to(self.device), with_patches=self.mixing is not None)
        config = self.config
        with amp:
            outputs, first, last = module(x)
            if self.distill is not None:
                loss = self.distill(outputs, targets, self.teacher(x))
            else:
                logits = (outputs[0] + outputs[1]) / 2 if isinstance(outputs, tuple) else outputs
                loss = soft_target_cross_entropy(logits, targets)
            if config.patch_cosine > 0:
                loss = loss + config.patch_cosine * patch_cosine_loss(last)
            if config.patch_contrastive > 0:
                loss = loss + config.patch_contrastive * patch_contrastive_loss(last, first)
            if self.mixing is not None:  # the head inside `module` (DDP syncs its gradients with the rest)
                loss = loss + config.patch_mixing * self.mixing(last, patch_targets)
        return loss

    def evaluate(self, model: nn.Module, dataset: Any, amp: AbstractContextManager, desc: str) -> dict[str, float]:
        return self.evaluator(model, dataset, amp, desc)
