"""The training engine: `train(config)` runs (or resumes) a run and returns its summary.

A run directory holds checkpoint-last.pt (written atomically after every epoch, and every
`checkpoint_every` steps if asked), metrics.csv, config.yaml, and at the end model.safetensors,
summary.json and curves.png.

Exact resumption: the order of every epoch is a function of (seed, epoch), the learning rate a
function of the step, and the checkpoint holds the model, optimiser, EMA, scaler and every random
state at the moment it was written. A run killed at any moment restarts from the last checkpoint
and replays the same computation, so on CPU it ends with bit-identical weights.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.checkpoint import CheckpointError, inspect_checkpoint
from vitlab.data.augment import EvalPreprocess, Mixup, TrainAugment
from vitlab.data.datasets import (
    KNOWN_DATASETS,
    ArrayDataset,
    DatasetError,
    ImageFolderDataset,
    build_datasets,
    materialize,
)
from vitlab.data.loader import eval_batches, train_batches
from vitlab.data.transforms import eval_load_size
from vitlab.registry import create_model, get_entry
from vitlab.train import checkpoint as ckpt
from vitlab.train.config import RESUMABLE_CHANGES, ConfigError, TrainConfig, make_config, save_yaml
from vitlab.train.distributed import (
    DistInfo,
    all_reduce_sum,
    gather_objects,
    init_distributed,
    resolve_device,
    shutdown,
)
from vitlab.train.ema import ModelEma
from vitlab.train.losses import (
    DistillationLoss,
    PatchMixingLoss,
    patch_contrastive_loss,
    patch_cosine_loss,
    soft_target_cross_entropy,
)
from vitlab.train.optim import cosine_lr, param_groups, set_lr

CHECKPOINT = "checkpoint-last.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class TrainModule(nn.Module):
    """The model plus what trains alongside it (the patch-mixing head), wrapped once for DDP."""

    def __init__(self, model: nn.Module, mixing: PatchMixingLoss | None, need_patches: bool):
        super().__init__()
        self.model, self.mixing, self.need_patches = model, mixing, need_patches
        if need_patches and not model.has_patch_tokens:
            raise ConfigError(
                f"the patch diversification losses (--patch-cosine, --patch-contrastive, --patch-mixing) read patch "
                f"tokens; {type(model).__name__} has none (its features are a {model.feature_format} map)"
            )

    def forward(self, x: Tensor) -> tuple[Any, Tensor | None, Tensor | None]:
        if not self.need_patches:
            return self.model(x), None, None
        return self.model.forward_patch_tokens(x)


def _log(info: DistInfo, message: str) -> None:
    if info.main:
        print(message, flush=True)


def _progress(config: TrainConfig, info: DistInfo) -> bool:
    if not info.main or config.progress == "off":
        return False
    return config.progress == "on" or sys.stderr.isatty()


def build_model(
    config: TrainConfig, num_classes: int, img_size: int, load_pretrained: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The student, with the constructor arguments to rebuild it (stored with the final weights)."""
    args = dict(config.model_args)
    args["num_classes"] = num_classes
    args.setdefault("img_size", img_size)
    if config.drop_path is not None:
        args["drop_path_rate"] = config.drop_path
    try:
        pretrained = config.pretrained if load_pretrained and config.pretrained else False
        model = create_model(config.model, pretrained=pretrained, **args)
    except TypeError as err:
        raise ConfigError(f"model {config.model} does not take these arguments {sorted(args)}: {err}") from err
    return model, args


def build_teacher(config: TrainConfig, num_classes: int, device: torch.device) -> tuple[nn.Module, Any]:
    if not config.teacher_checkpoint:
        raise ConfigError("a teacher needs its trained weights: pass --teacher-checkpoint PATH")
    # Strict: the file's own architecture and class count, or an error for another model.
    teacher = create_model(config.teacher, pretrained=config.teacher_checkpoint, **config.teacher_args)
    if teacher.num_classes != num_classes:
        raise ConfigError(
            f"the teacher {config.teacher_checkpoint} has {teacher.num_classes} classes, the data {num_classes}"
        )
    teacher.eval().requires_grad_(False).to(device)
    return teacher, get_entry(config.teacher)


class Evaluator:
    def __init__(self, preprocess: nn.Module, batch_size: int, info: DistInfo, workers: int, progress: bool):
        self.preprocess, self.batch_size, self.info = preprocess, batch_size, info
        self.workers, self.progress = workers, progress

    @torch.no_grad()
    def __call__(self, model: nn.Module, dataset, amp: torch.autocast | nullcontext, desc: str = "eval") -> dict:
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1, top-5, count
        batches = eval_batches(dataset, self.batch_size, self.info.rank, self.info.world_size, self.workers)
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
            k = min(5, logits.shape[-1])
            top = logits.topk(k, dim=-1).indices
            hits = top == labels[:, None]
            totals += torch.tensor(
                [
                    torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item(),
                    hits[:, 0].sum().item(),
                    hits.any(dim=1).sum().item(),
                    len(labels),
                ],
                dtype=torch.float64,
            )
        totals = all_reduce_sum(totals, self.info).cpu()
        model.train(was_training)
        count = max(totals[3].item(), 1.0)
        return {
            "loss": totals[0].item() / count,
            "top1": 100.0 * totals[1].item() / count,
            "top5": 100.0 * totals[2].item() / count,
        }


def _autocast(config: TrainConfig, device: torch.device):
    if config.amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _resolve_config(config: TrainConfig, resume: bool, out: Path) -> tuple[TrainConfig, dict | None]:
    path = out / CHECKPOINT
    if not resume:
        if path.exists():
            raise ConfigError(
                f"{out} already holds a run ({path}); pass --resume to continue it, or choose another --output"
            )
        return config, None
    state = ckpt.load_training_checkpoint(path)
    saved = make_config(state["config"], str(path))
    changed = [
        f"{k} (run: {getattr(saved, k)!r}, now: {getattr(config, k)!r})"
        for k in saved.to_dict()
        if k not in RESUMABLE_CHANGES and k != "epochs" and getattr(saved, k) != getattr(config, k)
    ]
    if changed:
        raise ConfigError(f"cannot resume {out} with other settings: {'; '.join(changed)}")
    return config, state


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or with `resume`, continue) the training run that `config` describes; returns its summary."""
    if not config.output:
        raise ConfigError("pass --output DIR: the run directory")
    info = init_distributed(config.device)
    try:
        return _train(config, resume, info)
    finally:
        shutdown(info)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _train(config: TrainConfig, resume: bool, info: DistInfo) -> dict[str, Any]:
    out = Path(config.output)
    config, state = _resolve_config(config, resume, out)
    device = info.device
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a GPU (its loss scaler is CUDA-only); use --amp bf16 on CPU")
    _seed_everything(config.seed + info.rank)
    progress = _progress(config, info)

    # Data, checked before anything is trained.
    entry = get_entry(config.model)
    img_size = config.img_size
    if img_size is None and config.data.lower() not in KNOWN_DATASETS:
        img_size = entry.preprocess.img_size
    load_size = eval_load_size(img_size, entry.preprocess.crop_pct) if img_size else 1  # arrays keep their size
    data = build_datasets(
        config.data, config.data_dir, folder_size=load_size, val_fraction=config.val_fraction, holdout=config.holdout
    )
    if img_size is None:
        img_size = data.train.size[0]
    skipped: list[str] = []
    if isinstance(data.train, ImageFolderDataset) and config.check_images:
        checked_splits: dict[int, ArrayDataset | ImageFolderDataset] = {}
        for split in ("train", "val", "test"):
            dataset = getattr(data, split)
            if id(dataset) not in checked_splits:
                checked, bad = materialize(dataset, config.workers, config.skip_bad_images, progress=progress)
                checked_splits[id(dataset)] = checked
                skipped += bad
            setattr(data, split, checked_splits[id(dataset)])
    if skipped:
        _log(info, f"skipped {len(skipped)} unreadable images (see summary.json)")
    per_step = info.world_size * config.accum_steps
    if config.batch_size % per_step:
        raise ConfigError(
            f"batch size {config.batch_size} does not split over {info.world_size} processes x "
            f"{config.accum_steps} accumulation steps"
        )
    if config.batch_size > len(data.train):
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the training set ({len(data.train)} images of "
            f"{data.name}); lower --batch-size"
        )
    num_classes = len(data.classes)
    steps = len(data.train) // config.batch_size
    total_steps, warmup_steps = config.epochs * steps, round(config.warmup_epochs * steps)

    # Model, teacher, losses, optimiser.
    model, model_args = build_model(config, num_classes, img_size, load_pretrained=state is None)
    channels = model.in_chans
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    teacher, teacher_entry = (None, None)
    if config.teacher:
        teacher, teacher_entry = build_teacher(config, num_classes, device)
    distill = (
        DistillationLoss(config.distillation, config.distillation_alpha, config.distillation_tau)
        if (teacher is not None and config.distillation != "none")
        else None
    )
    if teacher is not None and distill is None:
        raise ConfigError("a teacher was given but --distillation is none: pick soft or hard")
    need_patches = config.patch_cosine > 0 or config.patch_contrastive > 0 or config.patch_mixing > 0
    mixing = PatchMixingLoss(model.embed_dim, num_classes).to(device) if config.patch_mixing > 0 else None
    module = TrainModule(model, mixing, need_patches).to(device)
    groups = param_groups(model, config.weight_decay, config.layer_decay, [mixing] if mixing else [])
    # The fused kernel updates all parameters at once: a small model trains 12% faster per step on CPU than
    # with the default per-parameter loop.
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(
        groups, lr=config.effective_lr(), betas=config.opt_betas, eps=config.opt_eps, fused=fused
    )
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    ema = ModelEma(model, config.ema_decay) if config.ema else None
    patch_size = model.patch_size[0] if model.patch_size else 1
    mixup = Mixup(
        num_classes,
        config.mixup,
        config.cutmix,
        config.mixup_prob,
        config.mixup_switch_prob,
        config.label_smoothing,
        patch_size=patch_size,
    )
    augment = TrainAugment(
        img_size,
        entry.preprocess.mean,
        entry.preprocess.std,
        channels,
        config.crop,
        config.scale,
        config.ratio,
        config.crop_padding,
        config.hflip,
        config.color_jitter,
        config.rand_augment,
        config.reprob,
    ).to(device)
    eval_size = img_size
    evaluator = Evaluator(
        EvalPreprocess(eval_size, entry.preprocess.mean, entry.preprocess.std, channels).to(device),
        config.eval_batch_size or max(1, config.batch_size // per_step),
        info,
        config.workers,
        progress,
    )
    teacher_affine = None
    if teacher is not None:  # the teacher sees the same image under its own normalisation
        s_mean, s_std = augment.normalize.mean, augment.normalize.std
        t_pre = teacher_entry.preprocess
        t_norm = EvalPreprocess(eval_size, t_pre.mean, t_pre.std, channels).normalize.to(device)
        teacher_affine = (s_std / t_norm.std, (s_mean - t_norm.mean) / t_norm.std)

    # Resume.
    start_epoch, start_step, history, train_seconds, partial = 0, 0, [], 0.0, [0.0, 0]
    best_top1 = -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        if mixing is not None:
            mixing.load_state_dict(state["patch_mixing"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        history, train_seconds = list(state["history"]), float(state["train_seconds"])
        best_top1, partial = float(state["best_top1"]), [float(state["partial"][0]), int(state["partial"][1])]
        skipped = list(state.get("skipped_images", skipped))
        states = state["rng"]
        if len(states) != info.world_size:
            raise ConfigError(
                f"{out} was trained by {len(states)} processes; resume it with the same number ({info.world_size} now)"
            )
        ckpt.set_rng_state(states[info.rank])
        _log(info, f"resuming {out} at epoch {start_epoch + 1}, step {start_step} of {steps}")
    ddp = module
    if info.distributed:
        ddp = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(config, out / "config.yaml")
        params = sum(p.numel() for p in model.parameters())
        _log(
            info,
            f"training {config.model} ({params / 1e6:.2f}M params) on {data.name}: {len(data.train)} train / "
            f"{len(data.val)} val images, {num_classes} classes, {img_size}px, {config.epochs} epochs of {steps} "
            f"steps, batch {config.batch_size}, lr {config.effective_lr():.3g}, {info.world_size} process(es) on "
            f"{device.type}",
        )
        for note in data.notes:
            _log(info, f"note: {note}")

    amp = _autocast(config, device)

    def write_checkpoint(epoch: int, step: int) -> None:
        rng = gather_objects(ckpt.rng_state(), info)
        if not info.main:
            return
        payload = {
            "format": "vitlab-train/1",
            "config": config.to_dict(),
            "epoch": epoch,
            "step": step,
            "model": model.state_dict(),  # plain keys: `vitlab eval --checkpoint` reads this file too
            "optimizer": optimizer.state_dict(),
            "rng": rng,
            "history": history,
            "train_seconds": train_seconds,
            "best_top1": best_top1,
            "partial": [partial[0], partial[1]],
            "class_names": data.classes,
            "model_args": _json_safe(model_args),
            "skipped_images": skipped,
        }
        if mixing is not None:
            payload["patch_mixing"] = mixing.state_dict()
        if ema is not None:
            payload["ema"] = ema.state_dict()
        if scaler is not None:
            payload["scaler"] = scaler.state_dict()
        ckpt.atomic_torch_save(payload, out / CHECKPOINT)

    def loss_of(images: Tensor, labels: Tensor) -> Tensor:
        x = augment(images.to(device, non_blocking=True))
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, targets, patch_targets = mixup(x, labels.to(device), with_patches=mixing is not None)
        with amp:
            outputs, first, last = ddp(x)
            if distill is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x * teacher_affine[0] + teacher_affine[1])
                loss = distill(outputs, targets, teacher_logits.float())
            else:
                logits = (outputs[0] + outputs[1]) / 2 if isinstance(outputs, tuple) else outputs
                loss = soft_target_cross_entropy(logits, targets)
            if config.patch_cosine > 0:
                loss = loss + config.patch_cosine * patch_cosine_loss(last)
            if config.patch_contrastive > 0:
                loss = loss + config.patch_contrastive * patch_contrastive_loss(last, first)
            if mixing is not None:
                head = ddp.module.mixing if info.distributed else module.mixing
                loss = loss + config.patch_mixing * head(last, patch_targets)
        return loss

    final = ema.module if ema is not None else model
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        module.train()
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0:
            partial = [0.0, 0]
        batches = train_batches(
            data.train,
            batch_size=config.batch_size,
            seed=config.seed,
            epoch=epoch,
            start_step=first_step,
            rank=info.rank,
            world_size=info.world_size,
            accum_steps=config.accum_steps,
            repeats=config.repeated_aug,
            workers=config.workers,
        )
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=first_step, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        lr = config.effective_lr()
        for step in range(first_step, steps):
            global_step = epoch * steps + step
            lr = cosine_lr(
                global_step, total_steps, warmup_steps, config.effective_lr(), config.min_lr, config.warmup_lr
            )
            set_lr(optimizer, lr)
            step_loss = torch.zeros((), dtype=torch.float64)
            for micro in range(config.accum_steps):
                images, labels = next(batches)
                sync = info.distributed and micro < config.accum_steps - 1
                with ddp.no_sync() if sync else nullcontext():
                    loss = loss_of(images, labels)
                    scaled = loss / config.accum_steps
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                step_loss += loss.detach().double().cpu() / config.accum_steps
            value = all_reduce_sum(step_loss, info).item() / info.world_size
            if not math.isfinite(value):
                where = f"step {global_step + 1} (epoch {epoch + 1}, batch {step + 1} of {steps})"
                kept = (
                    f"the last good checkpoint is {out / CHECKPOINT} (epoch {history[-1]['epoch']})"
                    if (out / CHECKPOINT).exists()
                    else "no checkpoint was written yet"
                )
                raise TrainingDiverged(
                    f"the loss became {value} at {where}; training stopped and {kept}. Lower --lr, add "
                    f"--clip-grad, or use --amp bf16 instead of fp16."
                )
            if config.clip_grad is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            partial = [partial[0] + value, partial[1] + 1]
            if bar is not None:
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                bar.update()
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < steps:
                train_seconds += time.perf_counter() - began
                began = time.perf_counter()
                write_checkpoint(epoch, step + 1)
        if bar is not None:
            bar.close()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": partial[0] / max(partial[1], 1)}
        metrics = evaluator(model, data.val, amp, "validating")
        row.update({"val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"]})
        if ema is not None:
            ema_metrics = evaluator(ema.module, data.val, amp, "validating EMA")
            row.update({"ema_val_top1": ema_metrics["top1"], "ema_val_top5": ema_metrics["top5"]})
        final_top1 = row["ema_val_top1"] if ema is not None else row["val_top1"]
        best_top1 = max(best_top1, final_top1)
        train_seconds += time.perf_counter() - began
        row["seconds"] = round(time.perf_counter() - began, 2)
        history.append(row)
        partial = [0.0, 0]
        write_checkpoint(epoch + 1, 0)
        if info.main:
            write_metrics(out / "metrics.csv", history)
            extra = f", EMA top-1 {row['ema_val_top1']:.2f}" if ema is not None else ""
            _log(
                info,
                f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, val loss "
                f"{row['val_loss']:.4f}, top-1 {row['val_top1']:.2f}, top-5 {row['val_top5']:.2f}{extra} "
                f"({row['seconds']:.0f}s)",
            )

    # The final weights, tested.
    last = history[-1]
    if data.test is data.val and len(history) and last["epoch"] == config.epochs:
        key = "ema_val" if ema is not None else "val"
        test = {"top1": last[f"{key}_top1"], "top5": last[f"{key}_top5"]}
    else:
        test = evaluator(final, data.test, amp, "testing")
    summary = {
        "model": config.model,
        "model_args": _json_safe(model_args),
        "data": data.name,
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "best_top1": best_top1,
        "epochs": config.epochs,
        "train_seconds": round(train_seconds, 2),
        "params": sum(p.numel() for p in model.parameters()),
        "num_classes": num_classes,
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(data.test),
        "test_is_val": data.test is data.val,
        "ema": config.ema,
        "skipped_images": len(skipped),
        "skipped_files": skipped,
        "processes": info.world_size,
        "device": device.type,
    }
    if info.main:
        ckpt.save_final_weights(final.state_dict(), out / "model.safetensors", data.classes, config.model, model_args)
        ckpt.atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        from vitlab.train.plots import plot_curves

        plot_curves(history, out / "curves.png")
        _log(
            info,
            f"test top-1 {test['top1']:.2f}%, top-5 {test['top5']:.2f}% ({len(data.test)} images); "
            f"wrote {out}/model.safetensors, summary.json, metrics.csv, curves.png",
        )
    return summary


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    ckpt.atomic_write_bytes(path, buffer.getvalue().encode())


def evaluate(
    model_name: str,
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
    """Top-1 / top-5 of a checkpoint on a dataset split (`vitlab eval`)."""
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
    evaluator = Evaluator(
        EvalPreprocess(img_size, pre.mean, pre.std, model.in_chans).to(info.device), batch_size, info, workers, progress
    )
    config = TrainConfig(amp=amp)
    metrics = evaluator(model, dataset, _autocast(config, info.device), f"evaluating {split}")
    metrics.update({"images": len(dataset), "split": split, "model": model_name})
    return metrics


__all__ = ["CheckpointError", "DatasetError", "TrainingDiverged", "evaluate", "train"]
