"""`vitlab eval`: a checkpoint scored on a dataset split, with the evaluation preprocessing of training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vitlab.checkpoint import inspect_checkpoint
from vitlab.data.datasets import KNOWN_DATASETS, build_datasets
from vitlab.data.folders import evaluation_folder
from vitlab.data.transforms import eval_load_size
from vitlab.registry import create_model, get_entry
from vitlab.train.config import ConfigError
from vitlab.train.distributed import DistInfo, resolve_device
from vitlab.train.precision import autocast, resolve_amp
from vitlab.train.tasks.classification import Evaluator

SPLITS = ("all", "train", "val", "test")


def described_model(model_name: str | None, checkpoint: str) -> tuple[Any, str]:
    """What the checkpoint says about itself, and the model to build: `model_name`, else the one it names."""
    described = inspect_checkpoint(checkpoint)
    model_name = model_name or described.model
    if not model_name:
        raise ConfigError(f"{checkpoint} does not say which model it holds: pass --model NAME")
    return described, model_name


def check_class_count(model: Any, dataset: Any, checkpoint: str, data: str) -> None:
    if model.num_classes != len(dataset.classes):
        raise ConfigError(f"{checkpoint} has {model.num_classes} classes, {data} has {len(dataset.classes)}")


def evaluate(
    model_name: str | None,
    checkpoint: str,
    data: str,
    data_dir: str | None = None,
    split: str | None = None,
    batch_size: int = 256,
    img_size: int | None = None,
    device: str = "auto",
    workers: int = 2,
    progress: bool = False,
    amp: str = "auto",
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 of a checkpoint on a dataset split (`vitlab eval`).

    A vitlab file names its model and input size; `model_name` and `img_size` override them. For an
    image folder `split` defaults to "all" (every image) and classes are matched by name with the
    checkpoint's class names; for a benchmark dataset it defaults to "test". With `skip_bad`, images
    that cannot be read are left out and listed under "skipped" (else the first one is an error).
    "seconds" is the time spent reading, preprocessing and scoring, after the model is loaded.
    """
    from vitlab.data.augment import EvalPreprocess

    info = DistInfo(device=resolve_device(device))
    described, model_name = described_model(model_name, checkpoint)
    entry = get_entry(model_name)
    overrides = {} if img_size is None else {"img_size": img_size}
    if img_size is None and model_name == described.model:
        img_size = described.model_args.get("img_size")
    folder = data.lower() not in KNOWN_DATASETS
    if img_size is None and folder:
        img_size = entry.preprocess.img_size
    load_size = eval_load_size(img_size, entry.preprocess.crop_pct) if img_size else 1
    split = split or ("all" if folder else "test")
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if folder:
        dataset = evaluation_folder(Path(data), split, load_size, described.class_names)
    elif split == "all":
        raise ConfigError(f"--split all scores an image folder; {data} has train and test splits")
    else:
        dataset = getattr(build_datasets(data, data_dir, folder_size=load_size), split)
        img_size = img_size or dataset.size[0]
        overrides.setdefault("img_size", img_size)
    model = create_model(model_name, pretrained=described, **overrides)
    check_class_count(model, dataset, checkpoint, data)
    model.to(info.device).eval()
    pre = entry.preprocess
    preprocess = EvalPreprocess(img_size, pre.mean, pre.std, model.in_chans).to(info.device)
    evaluator = Evaluator(preprocess, batch_size, info, workers, progress, skip_bad)
    began = time.perf_counter()
    metrics = evaluator(model, dataset, autocast(resolve_amp(amp, info.device), info.device), f"evaluating {split}")
    seconds = time.perf_counter() - began
    skipped = evaluator.skipped or []
    metrics.update({"images": len(dataset) - len(skipped), "skipped": skipped, "split": split, "model": model_name})
    metrics["seconds"] = seconds
    return metrics
