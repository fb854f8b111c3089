"""`train(config)`: set up a run (or pick up an interrupted one), train it, measure it once at the end.

Every process starts from the same weights (the model is built under the run's seed); only the
data order share and the augmentation randomness differ by rank. A run directory with a checkpoint
is continued with `resume=True`; with `resume=True` and no checkpoint yet, the run starts, so the
same command can be resubmitted after any pre-emption.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import torch
from torch import nn

from vitlab.registry import get_entry
from vitlab.train.build import build_model, build_optimizer, build_teacher, data_seed, load_data, seed_everything
from vitlab.train.config import RESUMABLE_CHANGES, ConfigError, TrainConfig, make_config
from vitlab.train.distributed import DistInfo, init_distributed, peers_watched, shutdown
from vitlab.train.ema import ModelEma
from vitlab.train.loop import Run, fit
from vitlab.train.precision import autocast, loss_scaler, resolve_amp
from vitlab.train.rundir import RunDir
from vitlab.train.state import TrainState
from vitlab.train.tasks import Task
from vitlab.train.tasks.classification import ClassificationTask
from vitlab.train.tasks.segmentation import SegmentationTask, load_segmentation_data


def train(config: TrainConfig, resume: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Run (or with `resume`, continue) the training run that `config` describes; returns its summary.

    `threads`: CPU threads asked for; None keeps the current count, or on resume the run's own (float
    sums depend on it, so a bit-identical continuation needs the count the run started with).
    """
    if not config.output:
        raise ConfigError("pass --output DIR: the run directory")
    info = init_distributed(config.device)
    try:
        run = prepare(config, resume, info, threads)
        with peers_watched(info, run.rundir):
            fit(run)
        return finish(run)
    finally:
        shutdown(info)


def prepare(config: TrainConfig, resume: bool, info: DistInfo, threads: int | None = None) -> Run:
    def log(message: str) -> None:
        if info.main:
            print(message, flush=True)

    rundir = RunDir(config.output)
    if info.main and rundir.remove_stale_temporaries():
        log(f"removed the half-written files of an interrupted write in {rundir}")
    saved = saved_checkpoint(rundir, config, resume, log)
    if threads is None and saved is not None and saved.get("threads"):
        threads = int(saved["threads"])
    if threads is not None:
        torch.set_num_threads(threads)
    amp = resolve_amp(config.amp, info.device)
    progress = info.main and (config.progress == "on" or (config.progress == "auto" and sys.stderr.isatty()))
    entry = get_entry(config.model)
    data, img_size, skipped, crop = task_data(config, entry, info, progress, log)
    seed_everything(config.seed)  # the same on every process: the same initial weights
    model, model_args = build_model(config, len(data.classes), img_size, load_pretrained=saved is None)
    model.to(info.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    task = build_task(config, entry, model, data, img_size, crop, info, progress)
    state = TrainState(
        model,
        build_optimizer(config, model, task.extra_module, info.device),
        task.extra_module,
        ModelEma(model, config.ema_decay) if config.ema else None,
        loss_scaler(amp, info.device),
        skipped_images=skipped,
    )
    if saved is not None:
        state.load_state_dict(saved, info, str(rundir.checkpoint))
        log(f"resuming {rundir} at epoch {state.epoch + 1}, step {state.step}")
    else:
        seed_everything(data_seed(config.seed, info.rank))
    module = task.train_module(model)
    if config.compile:
        module.compile()  # in place: parameter names, and so checkpoints, stay those of the plain model
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
    run = Run(
        config, info, rundir, data, task, state, module, autocast(amp, info.device),
        steps_per_epoch=len(data.train) // config.batch_size, log=log, progress=progress,
        checkpoint_extras=dict(
            config=config.to_dict(), class_names=data.classes, model_args=json_safe(model_args),
            threads=torch.get_num_threads(),  # float sums depend on it: a resumed run keeps it
        ),
    )  # fmt: skip
    if info.main:
        rundir.path.mkdir(parents=True, exist_ok=True)
        rundir.write_config(config)
        log(describe(run, amp))
    steps = run.steps_per_epoch
    warmup, total = config.warmup_steps(steps), config.total_steps(steps)
    if warmup > 0.5 * total:
        span = (
            f"{warmup / steps:g} epochs) covers most of the {config.epochs}-epoch run"
            if config.max_steps is None
            else f"{warmup} steps) covers most of the {total}-step run"
        )
        warnings.warn(
            f"the learning-rate warmup ({span}: the rate peaks late and the run barely trains at it; "
            "lower --warmup-epochs",
            stacklevel=2,
        )
    return run


def task_data(config: TrainConfig, entry: Any, info: DistInfo, progress: bool, log) -> tuple[Any, int, list, Any]:
    """(splits, image size, skipped files, crop size) for the model's task: image/mask pairs stored at
    the evaluation scale and trained on crops (segmentation), strips of images (sequence-to-sequence),
    or images."""
    if entry.task == "semantic-segmentation":
        data, img_size, crop, skipped = load_segmentation_data(config, entry, info, log)
        return data, img_size, skipped, crop
    data, img_size, skipped = load_data(config, entry, info, progress, log)
    if entry.task == "sequence-to-sequence":  # the images become strips, their labels sequences
        from vitlab.train.tasks.seq2seq import strip_splits

        data = strip_splits(data, config)
    return data, img_size, skipped, None


def build_task(config: TrainConfig, entry: Any, model: nn.Module, data: Any, img_size: int, crop: Any,
               info: DistInfo, progress: bool) -> Task:  # fmt: skip
    """The task the model's registered task names."""
    if entry.task == "semantic-segmentation":
        return SegmentationTask(config, model, crop, info, progress)
    if entry.task == "sequence-to-sequence":
        from vitlab.train.tasks.seq2seq import Seq2SeqTask

        return Seq2SeqTask(config, model, info, progress)
    teacher = build_teacher(config, len(data.classes), model, info.device)
    return ClassificationTask(config, model, len(data.classes), img_size, info, teacher, progress)


def metrics_test(run: Run) -> tuple[dict[str, Any], str]:
    """The final weights' metrics on the test split (the last validation's when that is the test split):
    top-1 / top-5 for classification, the task's own otherwise (sequence accuracy, token accuracy)."""
    state, data = run.state, run.data
    last = state.history[-1]
    if data.test is data.val:  # the last validation already measured these weights on this split
        prefix = "ema_val_" if state.ema is not None else "val_"
        test = {k.removeprefix(prefix): v for k, v in last.items() if k.startswith(prefix)}
    else:
        test = run.task.evaluate(state.final_model, data.test, run.amp, "testing")
    test.pop("loss", None)
    fields = {**{f"test_{k}": v for k, v in test.items()}, f"best_val_{run.task.selection_metric}": state.best_val}
    if "top1" in test:
        scores = f"top-1 {test['top1']:.2f}%, top-5 {test['top5']:.2f}%"
    else:
        scores = ", ".join(f"{k} {v:.2f}%" for k, v in test.items())
    return fields, f"test {scores} ({len(data.test)} {'strips' if seq2seq_run(run) else 'images'})"


def seq2seq_run(run: Run) -> bool:
    return getattr(run.state.model, "task", None) == "sequence-to-sequence"


def json_safe(values: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments as plain JSON values (what safetensors metadata and weights-only checkpoints hold)."""
    return json.loads(json.dumps(values, default=str))


def saved_checkpoint(rundir: RunDir, config: TrainConfig, resume: bool, log) -> dict[str, Any] | None:
    """The checkpoint to continue from (None: start), after checking it was made with these settings."""
    if not rundir.has_checkpoint():
        if resume:
            log(f"no checkpoint in {rundir} yet: starting the run")
        return None
    if not resume:
        raise ConfigError(
            f"{rundir} already holds a run ({rundir.checkpoint}); pass --resume to continue it, or choose "
            f"another --output"
        )
    payload = rundir.read_checkpoint()
    saved = make_config(payload["config"], str(rundir.checkpoint))
    changed = [
        f"{k} (run: {getattr(saved, k)!r}, now: {getattr(config, k)!r})"
        for k in saved.to_dict()
        if k not in RESUMABLE_CHANGES and k not in ("epochs", "max_steps") and getattr(saved, k) != getattr(config, k)
    ]
    if changed:
        raise ConfigError(f"cannot resume {rundir} with other settings: {'; '.join(changed)}")
    return payload


def describe(run: Run, amp: str) -> str:
    config, data, info = run.config, run.data, run.info
    params = sum(p.numel() for p in run.state.model.parameters())
    total = config.total_steps(run.steps_per_epoch)
    cut = f" ({total} steps in all)" if total != run.epochs * run.steps_per_epoch else ""
    lines = [
        f"training {config.model} ({params / 1e6:.2f}M params) on {data.name}: {len(data.train)} train / "
        f"{len(data.val)} val images, {len(data.classes)} classes, {run.epochs} epochs of {run.steps_per_epoch} "
        f"steps{cut}, batch {config.batch_size}, lr {config.effective_lr():.3g} (warmup "
        f"{config.warmup_steps(run.steps_per_epoch)} steps), {info.world_size} process(es) on "
        f"{info.device.type}, precision {'float32' if amp == 'none' else amp}"
    ]
    return "\n".join(lines + [f"note: {note}" for note in data.notes])


def finish(run: Run) -> dict[str, Any]:
    """Test the final weights once, write them, the summary and the curves; returns the summary."""
    config, state, data, info = run.config, run.state, run.data, run.info
    final = state.final_model
    if isinstance(run.task, SegmentationTask):  # per-class results: the test split is measured again
        fields, line = run.task.test_summary(final, data, run.amp, state.best_val)
    else:
        fields, line = metrics_test(run)
    args = run.checkpoint_extras["model_args"]
    summary = {
        "model": config.model,
        "model_args": args,
        "data": data.name,
        **fields,
        "val_is_test": data.test is data.val,
        "epochs": run.epochs,
        "steps": config.total_steps(run.steps_per_epoch),
        "train_seconds": round(state.train_seconds, 2),
        "params": sum(p.numel() for p in state.model.parameters()),
        "num_classes": len(data.classes),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(data.test),
        "ema": config.ema,
        "skipped_images": len(state.skipped_images),
        "skipped_files": state.skipped_images,
        "processes": info.world_size,
        "device": info.device.type,
        "threads": torch.get_num_threads(),
    }
    if info.main:
        run.rundir.write_weights(final.state_dict(), data.classes, config.model, args)
        run.rundir.write_summary(summary)
        run.rundir.write_curves(state.history)
        written = "model.safetensors, summary.json, metrics.csv, curves.png"
        if isinstance(run.task, SegmentationTask):
            run.task.draw_predictions(final, data.val, run.rundir.path / "predictions.png")
            written += ", predictions.png"
        run.log(f"{line}; wrote {run.rundir}/{written}")
    return summary
