"""Parameter groups (weight decay, layer-wise lr decay, a head multiplier) and the warmup + cosine or
poly schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of every parameter for layer-wise lr decay, and the number of blocks L.

    From the model's `block_order()`: the embedding is depth 0, block k is depth k, the final norm
    and head depth L + 1.
    """
    groups = model.block_order()
    return {name: depth for depth, names in enumerate(groups) for name in names}, len(groups) - 2


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    extra: Iterable[nn.Module] = (),
    head: Iterable[str] = (),
    head_lr_mult: float = 1.0,
) -> list[dict]:
    """Groups for AdamW: no decay on 1-D parameters (norms, biases) and on `model.no_weight_decay()`;
    with `layer_decay`, each group's `lr_scale` is layer_decay ** (L + 1 - depth), so the head
    trains at the full rate and the embedding at the smallest (BEiT / MAE fine-tuning). Parameters
    named in `head` (a segmentation model's decoders) have their `lr_scale` times `head_lr_mult`
    (mmseg's `paramwise_cfg` lr_mult for the head).
    """
    head = set(head)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    ids, depth = layer_ids(model) if layer_decay is not None else ({}, 0)
    groups: dict[tuple[bool, int], dict] = {}
    named = list(model.named_parameters()) + [
        (f"extra{i}.{n}", p) for i, m in enumerate(extra) for n, p in m.named_parameters()
    ]
    for name, param in named:
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name not in skip and not name.endswith(".bias")
        layer = ids.get(name, depth + 1)
        key = (decay, layer, name in head)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
            scale *= head_lr_mult if key[2] else 1.0
            groups[key] = {"params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[1], k[2], not k[0]))]


def cosine_lr(step: int, total: int, warmup: int, lr: float, min_lr: float, warmup_lr: float) -> float:
    """Linear warmup from `warmup_lr` to `lr` over `warmup` steps, then cosine decay to `min_lr` at `total`."""
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def poly_lr(step: int, total: int, warmup: int, lr: float, min_lr: float, warmup_lr: float, power: float) -> float:
    """Linear warmup from `warmup_lr` to `lr` over `warmup` steps, then the poly decay of mmseg 1.x's
    `PolyLR(eta_min=min_lr, begin=warmup)`: min_lr + (lr - min_lr) (1 - (step - warmup) / (total - warmup)) ** power."""
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (lr - min_lr) * (1 - progress) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
