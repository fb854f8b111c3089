"""`vitlab eval` and `vitlab predict` for segmentation models.

Both read a checkpoint, rebuild its model and prepare images the way training validated: each image
resized (bilinear, aspect kept) so that its long side is the model's `img_size` (the scale a run
stores its pairs at, `--img-size`), normalised with the model's mean and std. `eval` scores a split
with whole-image or sliding-window inference (optional flip and scales) at the masks' original
resolution and returns the per-class table; `predict` writes each image's mask as a palette PNG
and an overlay with a legend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.checkpoint import inspect_checkpoint
from vitlab.data.arrays import DatasetError
from vitlab.data.seg_augment import SegmentationPreprocess
from vitlab.registry import UnknownModelError, create_model, get_entry
from vitlab.segmentation.inference import segment
from vitlab.segmentation.metrics import per_class_table
from vitlab.train.config import ConfigError
from vitlab.train.distributed import DistInfo, resolve_device
from vitlab.train.evaluate import check_class_count, described_model
from vitlab.train.precision import autocast, resolve_amp


def is_segmentation(model_name: str | None, checkpoint: str) -> bool:
    """Whether `model_name` (or the model the checkpoint names) is a segmentation model. An unknown name or a
    checkpoint that cannot be read is left to the classification path, which reports it in its own order."""
    from vitlab.checkpoint import CheckpointError

    if model_name is None:
        try:
            model_name = inspect_checkpoint(checkpoint).model
        except CheckpointError:
            return False
    try:
        return model_name is not None and get_entry(model_name).task == "semantic-segmentation"
    except UnknownModelError:
        return False


def load_segmenter(model_name: str | None, checkpoint: str) -> nn.Module:
    described, model_name = described_model(model_name, checkpoint)
    model = create_model(model_name, pretrained=described)
    model.eval_scale = described.model_args.get("img_size")  # the --img-size the run stored its pairs at
    if getattr(model, "class_names", None) is None:
        model.class_names = list(described.class_names or [str(i) for i in range(model.num_classes)])
    return model


def model_scale(model: nn.Module, img_size: int | None) -> int:
    """The long side images are resized to: `--img-size`, else the img_size the checkpoint was built with,
    else the model's preset's."""
    if img_size:
        return img_size
    size = getattr(model, "eval_scale", None)
    return int(size[0] if isinstance(size, tuple | list) else size) if size else model.entry.preprocess.img_size


def inference_options(
    scale: int,
    slide: bool = False,
    crop_size: int | None = None,
    stride: int | None = None,
    flip: bool = False,
    scales: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of `segment` for the command-line options (slide defaults: crop = the scale,
    stride = two thirds of the crop, as mmseg's 512 / 341)."""
    options: dict[str, Any] = {"flip": flip, "scales": tuple(scales or (1.0,))}
    if slide:
        crop = crop_size or scale
        options.update(mode="slide", crop=(crop, crop), stride=(stride or max(1, crop * 2 // 3),) * 2)
    elif crop_size or stride:
        raise ConfigError("--crop-size and --stride are for sliding-window inference: add --slide")
    return options


def evaluate_segmentation(
    model_name: str | None,
    checkpoint: str,
    data: str,
    data_dir: str | None = None,
    split: str | None = None,
    batch_size: int = 8,
    img_size: int | None = None,
    device: str = "auto",
    workers: int = 2,
    progress: bool = False,
    amp: str = "auto",
    skip_bad: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """mIoU, mAcc, aAcc and the per-class table of a checkpoint on a split (default: val). With
    `skip_bad`, pairs whose image or mask cannot be read are left out and their files listed under
    "skipped" (else the first one is an error naming it)."""
    from vitlab.data.seg_demo import demo_segmentation
    from vitlab.data.segmentation import find_segmentation_data
    from vitlab.train.tasks.segmentation import SEG_DEMO, SegmentationEvaluator

    info = DistInfo(device=resolve_device(device))
    model = load_segmenter(model_name, checkpoint).to(info.device).eval()
    scale = model_scale(model, img_size)
    split = split or "val"
    if data.lower() == SEG_DEMO:
        if split not in ("train", "val"):
            raise ConfigError(f"the {SEG_DEMO} data has train and val splits, not {split!r}")
        dataset = demo_segmentation(split)
    else:
        splits = find_segmentation_data(data, data_dir, scale)
        if split not in splits:
            raise ConfigError(f"{data} has no {split} split (it has {', '.join(splits)})")
        dataset = splits[split]
    check_class_count(model, dataset, checkpoint, data)
    pre = model.entry.preprocess
    inference = inference_options(scale=scale, **options)
    evaluator = SegmentationEvaluator(
        SegmentationPreprocess(pre.mean, pre.std).to(info.device), batch_size, info, workers, progress, skip_bad,
        **inference,
    )  # fmt: skip
    metrics = evaluator(model, dataset, autocast(resolve_amp(amp, info.device), info.device), f"evaluating {split}")
    table = per_class_table(evaluator.last, dataset.classes)
    skipped = evaluator.skipped or []
    if len(skipped) == len(dataset):
        raise DatasetError(
            f"no readable image/mask pair in {dataset.source} ({len(skipped)} skipped: {skipped[0]}, ...)"
        )
    images = len(dataset) - len(skipped)
    return {**metrics, "table": table, "images": images, "skipped": skipped, "split": split, "model": model.entry.name}


def predict_segmentation(
    model: nn.Module,
    paths: Sequence[str | Path],
    output: str | Path,
    img_size: int | None = None,
    skipped: list[str] | None = None,
) -> list[tuple[Path, Path, Path, dict[str, float]]]:
    """For each image: `<output>/<stem>_mask.png` (palette PNG of class indices) and `<stem>_overlay.png`;
    returns the image, the two paths and the share of the image each class covers (in percent). An
    unreadable image raises BadImageError naming it, or with a `skipped` list is left out and appended."""
    from vitlab.data.images import SKIP_HINT, BadImageError, load_image
    from vitlab.data.segmentation import rescale_long_side
    from vitlab.segmentation.visualize import overlay_figure, save_palette_png

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    scale = model_scale(model, img_size)
    pre = model.entry.preprocess
    preprocess = SegmentationPreprocess(pre.mean, pre.std)
    names = list(model.class_names)
    results = []
    for path in paths:
        try:
            decoded = load_image(path)
        except BadImageError as err:
            if skipped is None:
                raise BadImageError(err.path, err.reason + SKIP_HINT) from err
            skipped.append(str(path))
            continue
        image = torch.from_numpy(np.asarray(decoded, dtype=np.uint8).copy()).permute(2, 0, 1)
        with torch.inference_mode():
            probs = segment(model, preprocess(rescale_long_side(image, scale)[None]), tuple(image.shape[-2:]))
        mask = probs.argmax(dim=1)[0].numpy().astype(np.uint8)
        stem = Path(path).stem
        mask_path, overlay_path = output / f"{stem}_mask.png", output / f"{stem}_overlay.png"
        save_palette_png(mask, mask_path)
        picture = image.permute(1, 2, 0).numpy()
        overlay_path.write_bytes(overlay_figure(picture, mask, names, f"{model.entry.name}: {Path(path).name}"))
        counts = np.bincount(mask.ravel(), minlength=len(names))
        shares = {names[k]: 100.0 * counts[k] / mask.size for k in np.argsort(-counts) if counts[k]}
        results.append((Path(path), mask_path, overlay_path, shares))
    return results
