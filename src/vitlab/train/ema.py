"""Exponential moving average of the weights (Polyak averaging), as DeiT keeps it."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """ema = decay * ema + (1 - decay) * weights after every optimiser step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = dict(self.module.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].lerp_(param.detach(), 1.0 - self.decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buffer in model.named_buffers():
            ema_buffers[name].copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)
