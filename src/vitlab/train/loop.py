"""The training loop: epochs of optimiser steps, each over `accum_steps` micro-batches; no task inside.

Mixed precision, gradient accumulation and clipping, the learning-rate schedule, EMA, NaN
detection, checkpoints (after every epoch and every `checkpoint_every` steps) and metrics live
here; what a batch costs and how a model scores is the task's (`vitlab.train.tasks`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vitlab.data.loader import train_batches
from vitlab.train.config import TrainConfig
from vitlab.train.distributed import DistInfo, all_reduce_sum, broadcast_buffers
from vitlab.train.optim import cosine_lr, poly_lr, set_lr
from vitlab.train.rundir import RunDir
from vitlab.train.state import TrainState
from vitlab.train.tasks import Task


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class Run:
    """A prepared run: what the loop needs, built by `vitlab.train.run.prepare`."""

    config: TrainConfig
    info: DistInfo
    rundir: RunDir
    data: Any  # DataSplits: train, val, test, classes, name
    task: Task
    state: TrainState
    module: nn.Module  # the task's train module, wrapped in DDP when distributed
    amp: AbstractContextManager
    steps_per_epoch: int
    log: Callable[[str], None]
    checkpoint_extras: dict[str, Any] = field(default_factory=dict)  # config, class names, model arguments
    progress: bool = False
    mark: float = field(default_factory=time.perf_counter)

    def charge_time(self) -> None:
        """Add the time since the last mark to the run's training seconds (checkpointed with it)."""
        now = time.perf_counter()
        self.state.train_seconds += now - self.mark
        self.mark = now

    @property
    def lr(self) -> float:
        return self.config.effective_lr()

    @property
    def epochs(self) -> int:
        return self.config.num_epochs(self.steps_per_epoch)

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimiser steps of `epoch`: all of them but in a last epoch that `max_steps` cuts short."""
        return min(self.steps_per_epoch, self.config.total_steps(self.steps_per_epoch) - epoch * self.steps_per_epoch)

    def learning_rate(self, global_step: int) -> float:
        config, steps = self.config, self.steps_per_epoch
        total, warmup = config.total_steps(steps), config.warmup_steps(steps)
        if config.schedule == "poly":
            return poly_lr(global_step, total, warmup, self.lr, config.min_lr, config.warmup_lr, config.poly_power)
        return cosine_lr(global_step, total, warmup, self.lr, config.min_lr, config.warmup_lr)


def fit(run: Run) -> None:
    """Train from the state's epoch and step to the last epoch, checkpointing each epoch and validating
    every `val_every` epochs and after the last."""
    state = run.state
    run.mark = time.perf_counter()
    while state.epoch < run.epochs:
        began = time.perf_counter()
        lr = train_epoch(run)
        row = {"epoch": state.epoch + 1, "lr": lr, "train_loss": state.loss_sum / max(state.loss_steps, 1)}
        if (state.epoch + 1) % run.config.val_every == 0 or state.epoch + 1 == run.epochs:
            row.update(validate(run))
        run.charge_time()
        row["seconds"] = round(time.perf_counter() - began, 2)
        state.history.append(row)
        state.epoch, state.step, state.loss_sum, state.loss_steps = state.epoch + 1, 0, 0.0, 0
        write_checkpoint(run)
        if run.info.main:
            run.rundir.write_metrics(state.history)
            run.log(epoch_line(row, run.epochs))


def train_epoch(run: Run) -> float:
    """The rest of the current epoch's optimiser steps; returns the last learning rate."""
    config, state, info = run.config, run.state, run.info
    run.module.train()
    batches = train_batches(
        run.data.train,
        batch_size=config.batch_size,
        seed=config.seed,
        epoch=state.epoch,
        start_step=state.step,
        rank=info.rank,
        world_size=info.world_size,
        accum_steps=config.accum_steps,
        repeats=config.repeated_aug,
        workers=config.workers,
    )
    bar = progress_bar(run)
    lr = run.learning_rate(state.epoch * run.steps_per_epoch + state.step)
    steps = run.steps_in_epoch(state.epoch)
    while state.step < steps:
        lr = run.learning_rate(state.epoch * run.steps_per_epoch + state.step)
        loss = optimizer_step(run, batches, lr)
        state.step, state.loss_sum, state.loss_steps = state.step + 1, state.loss_sum + loss, state.loss_steps + 1
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            bar.update()
        every = config.checkpoint_every
        if every and state.step % every == 0 and state.step < steps:
            run.charge_time()
            write_checkpoint(run)
    if bar is not None:
        bar.close()
    return lr


def optimizer_step(run: Run, batches: Iterator[tuple[Tensor, Tensor]], lr: float) -> float:
    """One optimiser step over `accum_steps` micro-batches; returns its loss (mean over all processes)."""
    config, state, info = run.config, run.state, run.info
    set_lr(state.optimizer, lr)
    step_loss = torch.zeros((), dtype=torch.float64)
    for micro in range(config.accum_steps):
        images, labels = next(batches)
        sync = not info.distributed or micro == config.accum_steps - 1  # DDP averages gradients once per step
        with nullcontext() if sync else run.module.no_sync():
            loss = run.task.loss(run.module, images, labels, run.amp)
            scaled = loss / config.accum_steps
            (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        step_loss += loss.detach().double().cpu() / config.accum_steps
    value = all_reduce_sum(step_loss, info).item() / info.world_size
    if not math.isfinite(value):
        raise TrainingDiverged(diverged_message(run, value))
    if config.clip_grad is not None:
        if state.scaler is not None:
            state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(run.module.parameters(), config.clip_grad)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.update(state.model)
    return value


def validate(run: Run) -> dict[str, float]:
    """The epoch's validation metrics (and the EMA's), the same on every process."""
    state, info = run.state, run.info
    # Every process evaluates its share with rank 0's buffers (BatchNorm statistics), so that the
    # summed counts describe one model.
    broadcast_buffers(state.model, info)
    metrics = run.task.evaluate(state.model, run.data.val, run.amp, "validating")
    row = {f"val_{k}": v for k, v in metrics.items()}
    selected = metrics[run.task.selection_metric]
    if state.ema is not None:
        broadcast_buffers(state.ema.module, info)
        ema = run.task.evaluate(state.ema.module, run.data.val, run.amp, "validating EMA")
        row.update({f"ema_val_{k}": v for k, v in ema.items() if k != "loss"})
        selected = ema[run.task.selection_metric]
    state.best_val = max(state.best_val, selected)
    return row


def write_checkpoint(run: Run) -> None:
    payload = run.state.state_dict(run.info)
    if payload is not None:
        run.rundir.write_checkpoint({**payload, **run.checkpoint_extras})


def diverged_message(run: Run, value: float) -> str:
    state, steps = run.state, run.steps_per_epoch
    where = f"step {state.epoch * steps + state.step + 1} (epoch {state.epoch + 1}, batch {state.step + 1} of {steps})"
    kept = (
        f"the last good checkpoint is {run.rundir.checkpoint} (epoch {state.history[-1]['epoch']})"
        if run.rundir.has_checkpoint() and state.history
        else "no checkpoint was written yet"
    )
    return (
        f"the loss became {value} at {where}; training stopped and {kept}. Lower --lr, add --clip-grad, or use "
        f"--amp bf16 instead of fp16."
    )


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    line = f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}"
    if "val_miou" in row:  # segmentation
        line += f", val loss {row['val_loss']:.4f}, mIoU {row['val_miou']:.2f}, aAcc {row['val_aacc']:.2f}"
    elif "val_top1" in row:
        ema = f", EMA top-1 {row['ema_val_top1']:.2f}" if "ema_val_top1" in row else ""
        line += f", val loss {row['val_loss']:.4f}, top-1 {row['val_top1']:.2f}, top-5 {row['val_top5']:.2f}{ema}"
    elif "val_loss" in row:  # another task's metrics (sequence-to-sequence: seq_acc, token_acc)
        line += ", val " + ", ".join(f"{k[4:]} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
    return f"{line} ({row['seconds']:.0f}s)"


def progress_bar(run: Run):
    if not run.progress:
        return None
    from tqdm import tqdm

    epoch = f"epoch {run.state.epoch + 1}/{run.epochs}"
    return tqdm(total=run.steps_in_epoch(run.state.epoch), initial=run.state.step, desc=epoch, leave=False)
