"""`vitlab eval`: a checkpoint scored on a dataset split, with the evaluation preprocessing of training."""

from __future__ import annotations

from typing import Any

from vitlab.checkpoint import inspect_checkpoint
from vitlab.data.datasets import KNOWN_DATASETS, build_datasets
from vitlab.data.transforms import eval_load_size
from vitlab.registry import create_model, get_entry
from vitlab.train.config import ConfigError
from vitlab.train.distributed import DistInfo, resolve_device
from vitlab.train.precision import autocast, resolve_amp
from vitlab.train.tasks.classification import Evaluator


def evaluate(
    model_name: str | None,
    checkpoint: str,
    data: str,
    data_dir: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    img_size: int | None = None,
    device: str = "auto",
    workers: int = 2,
    progress: bool = False,
    amp: str = "none",
) -> dict[str, Any]:
    """Top-1 / top-5 of a checkpoint on a dataset split (`vitlab eval`).

    A vitlab file names its model and input size; `model_name` and `img_size` override them.
    """
    from vitlab.data.augment import EvalPreprocess

    info = DistInfo(device=resolve_device(device))
    described = inspect_checkpoint(checkpoint)
    model_name = model_name or described.model
    if not model_name:
        raise ConfigError(f"{checkpoint} does not say which model it holds: pass --model NAME")
    entry = get_entry(model_name)
    overrides = {} if img_size is None else {"img_size": img_size}
    if img_size is None and model_name == described.model:
        img_size = described.model_args.get("img_size")
    if img_size is None and data.lower() not in KNOWN_DATASETS:
        img_size = entry.preprocess.img_size
    load_size = eval_load_size(img_size, entry.preprocess.crop_pct) if img_size else 1
    splits = build_datasets(data, data_dir, folder_size=load_size)
    if img_size is None:
        img_size = overrides["img_size"] = splits.train.size[0]
    dataset = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    model = create_model(model_name, pretrained=checkpoint, **overrides)
    if model.num_classes != len(splits.classes):
        raise ConfigError(f"{checkpoint} has {model.num_classes} classes, {data} has {len(splits.classes)}")
    model.to(info.device).eval()
    pre = entry.preprocess
    preprocess = EvalPreprocess(img_size, pre.mean, pre.std, model.in_chans).to(info.device)
    evaluator = Evaluator(preprocess, batch_size, info, workers, progress)
    metrics = evaluator(model, dataset, autocast(resolve_amp(amp, info.device), info.device), f"evaluating {split}")
    metrics.update({"images": len(dataset), "split": split, "model": model_name})
    return metrics
