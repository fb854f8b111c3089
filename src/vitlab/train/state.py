"""Everything a training run changes as it goes, and so everything its checkpoint must hold.

A run resumes exactly because nothing else changes: the order of every epoch is a function of
(seed, epoch), the learning rate a function of the step, and the rest (weights, optimiser moments,
EMA, loss scaler, the task's own trainable parts, the history, and every process's random
states) is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitlab.train.checkpoint import rng_state, set_rng_state
from vitlab.train.config import ConfigError
from vitlab.train.distributed import DistInfo, gather_objects
from vitlab.train.ema import ModelEma

FORMAT = "vitlab-train/2"


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    task_module: nn.Module | None = None  # what the task trains besides the model (a patch-mixing head)
    ema: ModelEma | None = None
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps completed in the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    best_val: float = float("-inf")
    loss_sum: float = 0.0  # the current epoch's training loss so far, summed over `loss_steps` steps
    loss_steps: int = 0
    skipped_images: list[str] = field(default_factory=list)

    @property
    def final_model(self) -> nn.Module:
        """The weights a run delivers: the EMA's when it keeps one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self, info: DistInfo) -> dict[str, Any] | None:
        """The checkpoint payload on the main process (None elsewhere); every process's RNG states go in."""
        rng = gather_objects(rng_state(), info)
        if not info.main:
            return None
        payload = {
            "format": FORMAT,
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),  # plain keys: `vitlab eval --checkpoint` reads this file too
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "best_val": self.best_val,
            "loss": [self.loss_sum, self.loss_steps],
            "skipped_images": self.skipped_images,
        }
        for name, part in (("task", self.task_module), ("ema", self.ema), ("scaler", self.scaler)):
            if part is not None:
                payload[name] = part.state_dict()
        return payload

    def load_state_dict(self, payload: dict[str, Any], info: DistInfo, source: str) -> None:
        if payload.get("format") != FORMAT:
            raise ConfigError(f"{source} was written by another version of vitlab ({payload.get('format')})")
        states = payload["rng"]
        if len(states) != info.world_size:
            raise ConfigError(
                f"{source} was trained by {len(states)} processes; resume it with the same number "
                f"({info.world_size} now)"
            )
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        for name, part in (("task", self.task_module), ("ema", self.ema), ("scaler", self.scaler)):
            if part is not None:
                part.load_state_dict(payload[name])
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.history, self.train_seconds = list(payload["history"]), float(payload["train_seconds"])
        self.best_val = float(payload["best_val"])
        self.loss_sum, self.loss_steps = float(payload["loss"][0]), int(payload["loss"][1])
        self.skipped_images = list(payload["skipped_images"])
        set_rng_state(states[info.rank])
