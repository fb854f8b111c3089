"""Tasks: what a training loop does with a batch, and how a model is scored.

The loop (`vitlab.train.loop`) knows steps, accumulation, precision, checkpoints and processes; a
task knows its batches, losses and metrics. Classification is the first; semantic segmentation
and sequence-to-sequence implement the same interface.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn


class Task:
    """The interface a training loop drives.

    `train_module` wraps the model with what trains alongside it (one module, so that DDP wraps it
    once); `loss` turns one micro-batch into the loss to minimise through that module; `evaluate`
    scores a model on a dataset split and returns named metrics (`selection_metric` among them,
    higher is better); `state_dict` holds what the task trains besides the model.
    """

    selection_metric: str = "top1"

    def train_module(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def loss(self, module: nn.Module, images: Tensor, labels: Tensor, amp: AbstractContextManager) -> Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset: Any, amp: AbstractContextManager, desc: str) -> dict[str, float]:
        raise NotImplementedError

    @property
    def extra_module(self) -> nn.Module | None:
        """Parameters the task trains besides the model (optimised and checkpointed with it)."""
        return None
