"""Semantic segmentation: the joint image-and-mask augmentation, cross entropy with the ignore index
plus the auxiliary decoders' losses, and mIoU / mAcc / aAcc over the whole validation set.

The loss follows mmsegmentation: the decoder's logits (at its output stride) are resized to the
labels' size (bilinear, with the model's `align_corners`) and scored by cross entropy averaged over
the pixels whose label is not 255; each auxiliary decoder adds its own such loss times its weight
(`SegmentationOutput.aux_weights`, e.g. SETR's 0.4). Validation runs whole-image inference and
accumulates one confusion matrix, summed over the processes (`vitlab.segmentation.metrics`).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.data.seg_augment import SegmentationAugment, SegmentationPreprocess
from vitlab.data.segmentation import SegmentationDataset, eval_items
from vitlab.segmentation.base import IGNORE_INDEX, resize_logits
from vitlab.segmentation.inference import segment
from vitlab.segmentation.metrics import SegmentationScores, confusion_matrix, scores
from vitlab.train.config import ConfigError, TrainConfig
from vitlab.train.distributed import DistInfo, all_reduce_sum
from vitlab.train.tasks import Task


class SegmentationLoss(nn.Module):
    """The model and its loss, one module for DDP: (images, labels) -> the weighted sum of the losses."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        output = self.model.forward_logits(images)
        align = bool(getattr(self.model, "align_corners", False))
        size = tuple(labels.shape[-2:])
        loss = F.cross_entropy(resize_logits(output.logits, size, align).float(), labels, ignore_index=IGNORE_INDEX)
        for logits, weight in zip(output.aux, output.aux_weights, strict=True):
            aux = F.cross_entropy(resize_logits(logits, size, align).float(), labels, ignore_index=IGNORE_INDEX)
            loss = loss + weight * aux
        return loss


class SegmentationEvaluator:
    """Loss and the confusion-matrix metrics of a model on a dataset, with the chosen inference."""

    def __init__(
        self, preprocess: nn.Module, batch_size: int, info: DistInfo, workers: int, progress: bool,
        skip_bad: bool = False, **inference: Any,
    ):  # fmt: skip
        self.preprocess, self.batch_size, self.info = preprocess, batch_size, info
        self.workers, self.progress, self.inference = workers, progress, inference
        self.last: SegmentationScores | None = None
        self.skipped: list[str] | None = [] if skip_bad else None  # unreadable files left out (skip_bad)

    def batches(self, dataset: SegmentationDataset):
        """Consecutive pairs of one image size, up to `batch_size` at a time."""
        group: list[tuple[Tensor, Tensor]] = []
        for image, mask in eval_items(dataset, self.info.rank, self.info.world_size, self.workers, self.skipped):
            if group and (len(group) == self.batch_size or group[0][0].shape != image.shape
                          or group[0][1].shape != mask.shape):  # fmt: skip
                yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])
                group = []
            group.append((image, mask))
        if group:
            yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])

    @torch.no_grad()
    def __call__(self, model: nn.Module, dataset: SegmentationDataset, amp: AbstractContextManager, desc: str) -> dict:
        was_training = model.training
        model.eval()
        classes = len(dataset.classes)
        matrix = torch.zeros(classes, classes, dtype=torch.float64)
        loss = torch.zeros(2, dtype=torch.float64)  # summed negative log-likelihood, pixels counted
        batches = self.batches(dataset)
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(batches, total=math.ceil(len(dataset) / self.info.world_size), desc=desc, leave=False)
        for images, masks in batches:
            x = self.preprocess(images.to(self.info.device, non_blocking=True))
            masks = masks.to(self.info.device)
            with amp:
                probs = segment(model, x, tuple(masks.shape[-2:]), batch_size=self.batch_size, **self.inference)
            logp = probs.float().clamp_min(1e-12).log()
            nll = F.nll_loss(logp, masks, ignore_index=IGNORE_INDEX, reduction="sum")
            loss += torch.tensor([nll.item(), float((masks != IGNORE_INDEX).sum())], dtype=torch.float64)
            matrix += confusion_matrix(probs.argmax(dim=1), masks, classes).cpu().double()
        matrix = all_reduce_sum(matrix, self.info).cpu()
        loss = all_reduce_sum(loss, self.info).cpu()
        model.train(was_training)
        self.last = scores(matrix.round().long())
        return {"loss": loss[0].item() / max(loss[1].item(), 1.0), **self.last.as_dict()}


class SegmentationTask(Task):
    """What one micro-batch of images and masks costs, and mIoU on a split (selection metric)."""

    selection_metric = "miou"

    def __init__(self, config: TrainConfig, model: nn.Module, crop: int, info: DistInfo, progress: bool = False):
        pre = model.entry.preprocess
        self.config, self.device = config, info.device
        self.augment = SegmentationAugment(
            crop, pre.mean, pre.std, config.ratio_range, config.cat_max_ratio, config.hflip, config.photometric
        ).to(info.device)
        per_process = max(1, config.batch_size // (info.world_size * config.accum_steps))
        self.preprocess = SegmentationPreprocess(pre.mean, pre.std).to(info.device)
        self.evaluator = SegmentationEvaluator(
            self.preprocess, config.eval_batch_size or per_process, info, config.workers, progress
        )

    def train_module(self, model: nn.Module) -> nn.Module:
        return SegmentationLoss(model).to(self.device)

    def loss(self, module: nn.Module, images: Tensor, labels: Tensor, amp: AbstractContextManager) -> Tensor:
        x, targets = self.augment(images.to(self.device, non_blocking=True), labels.to(self.device))
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            return module(x, targets)

    def evaluate(self, model: nn.Module, dataset: Any, amp: AbstractContextManager, desc: str) -> dict[str, float]:
        return self.evaluator(model, dataset, amp, desc)

    def draw_predictions(self, model: nn.Module, dataset: SegmentationDataset, path) -> None:
        draw_predictions(self, model, dataset, path)

    def test_summary(self, model: nn.Module, data: Any, amp: AbstractContextManager, best_val: float):
        """The final weights on the test split: the summary's fields and the line the run prints."""
        metrics = self.evaluate(model, data.test, amp, "testing")
        result = self.evaluator.last
        per_class = {name: _finite(v) for name, v in zip(data.classes, result.iou, strict=True)}
        fields = {
            "test_miou": metrics["miou"],
            "test_macc": metrics["macc"],
            "test_aacc": metrics["aacc"],
            "test_per_class_iou": per_class,
            "test_per_class_acc": {name: _finite(v) for name, v in zip(data.classes, result.acc, strict=True)},
            "best_val_miou": best_val,
        }
        line = f"test mIoU {metrics['miou']:.2f}, mAcc {metrics['macc']:.2f}, aAcc {metrics['aacc']:.2f}"
        return fields, f"{line} ({len(data.test)} images)"


def _finite(value: float) -> float | None:
    """NaN (a class never labelled nor predicted) as null in JSON."""
    return None if math.isnan(value) else value


def check_segmentation_config(config: TrainConfig) -> None:
    """Options that belong to classification only, refused by name for a segmentation model."""
    used = {
        "mixup": config.mixup > 0, "cutmix": config.cutmix > 0, "rand_augment": bool(config.rand_augment),
        "reprob": config.reprob > 0, "teacher": bool(config.teacher), "layer_decay": config.layer_decay is not None,
        "train_images": config.train_images is not None, "repeated_aug": config.repeated_aug > 1,
        "patch_cosine": config.patch_cosine > 0, "patch_contrastive": config.patch_contrastive > 0,
        "patch_mixing": config.patch_mixing > 0, "holdout": config.holdout > 0,
    }  # fmt: skip
    refused = [f"--{name.replace('_', '-')}" for name, on in used.items() if on]
    if refused:
        raise ConfigError(f"{', '.join(refused)}: classification options, not used by a segmentation model")


SEG_DEMO = "seg-demo"


def load_segmentation_data(config: TrainConfig, entry: Any, info: DistInfo, log) -> tuple[Any, int, int, list[str]]:
    """The splits (checked: every pair decoded once before training), the side pairs are stored at
    (`--img-size`; the demo's 64, else the model's input size), the training crop (`--crop-size`,
    default that side) and the files of the pairs left out as unreadable (`--skip-bad-images`, which
    always runs the check). `--data seg-demo` (or classification's default `demo`) is the built-in data;
    with `--data-dir DIR` it reads DIR as an image/mask folder instead, so the demo recipe runs
    unchanged on one."""
    from vitlab.data.datasets import DataSplits
    from vitlab.data.seg_demo import SIDE, demo_segmentation
    from vitlab.data.segmentation import check_and_load, find_segmentation_data

    check_segmentation_config(config)
    name = config.data
    if name.lower() in (SEG_DEMO, "demo") and config.data_dir:  # a recipe for the demo, on the user's folder
        name = config.data_dir
    demo = name.lower() in (SEG_DEMO, "demo")
    skipped: list[str] = []
    size = config.img_size or (SIDE if demo else entry.preprocess.img_size)
    if demo:
        splits = {"train": demo_segmentation("train"), "val": demo_segmentation("val")}
    else:
        splits = find_segmentation_data(name, config.data_dir, size)
        if config.check_images or config.skip_bad_images:  # skipping needs the check: it finds the bad pairs
            for k, split in splits.items():
                splits[k], bad = check_and_load(
                    split, config.workers, keep=k == "train", skip_bad=config.skip_bad_images
                )
                skipped += bad
    train, val = splits["train"], splits["val"]
    notes = [] if "test" in splits else ["the validation split is also the test split"]
    data = DataSplits(train, val, splits.get("test", val), train.classes, SEG_DEMO if demo else name, notes)
    if config.batch_size % (info.world_size * config.accum_steps):
        raise ConfigError(
            f"batch size {config.batch_size} does not split over {info.world_size} processes x "
            f"{config.accum_steps} accumulation steps"
        )
    if config.batch_size > len(train):
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the training set ({len(train)} images of {data.name})"
        )
    if skipped:
        log(f"skipped {len(skipped)} unreadable image/mask pairs (see summary.json)")
    return data, size, config.crop_size or size, skipped


def draw_predictions(task: SegmentationTask, model: nn.Module, dataset: SegmentationDataset, path, count: int = 6):
    """predictions.png: the first `count` validation images, their masks and the model's (whole-image)."""
    from vitlab.segmentation.visualize import predictions_figure
    from vitlab.train.checkpoint import atomic_write_bytes

    was_training = model.training
    model.eval()
    images, truths, preds = [], [], []
    with torch.no_grad():
        for index in range(min(count, len(dataset))):
            scaled, mask = dataset.eval_item(index)
            probs = segment(model, task.preprocess(scaled[None].to(task.device)), tuple(mask.shape))
            images.append(dataset.read(index)[0].permute(1, 2, 0).numpy())  # shown at the mask's resolution
            truths.append(mask.numpy())
            preds.append(probs.argmax(dim=1)[0].cpu().numpy())
    model.train(was_training)
    atomic_write_bytes(path, predictions_figure(images, truths, preds, dataset.classes))  # each at its own size
