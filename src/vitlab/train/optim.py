"""AdamW parameter groups (weight decay, layer-wise lr decay) and the warmup + cosine schedule."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

_BLOCK = re.compile(r"^(.*?(?:blocks|layers|stages|levels)\.\d+)\.")


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of every parameter for layer-wise lr decay, and the number of layers L.

    A model may define `layer_id(name) -> int` (with `num_layers`) to decide. Otherwise the
    transformer blocks are found from the names: a parameter inside the k-th block met in
    registration order (`blocks.3.`, `layers.1.blocks.0.`, `stages.2.`...) gets k + 1; parameters
    registered before the first block (patch embedding, class token, position table) get 0; those
    after the last block (final norm, head) get L + 1; anything between blocks (e.g. a patch
    merging layer) shares the depth of the block before it.
    """
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "layer_id"):
        ids = {n: int(model.layer_id(n)) for n in names}
        return ids, int(getattr(model, "num_layers", max(ids.values()) - 1))
    paths = {n: _deepest_block(n) for n in names if _BLOCK.match(n)}
    containers = set(paths.values())
    # A block is a numbered container with no numbered container inside it (`layers.1` holds blocks).
    leaves = {c for c in containers if not any(o.startswith(c + ".") for o in containers)}
    blocks: dict[str, int] = {}
    for name in names:
        if paths.get(name) in leaves:
            blocks.setdefault(paths[name], len(blocks) + 1)
    depth = len(blocks)
    in_block = [n for n in names if paths.get(n) in leaves]
    last_block_param = names.index(in_block[-1]) if in_block else -1
    ids, current, seen_block = {}, 0, False
    for i, name in enumerate(names):
        if paths.get(name) in leaves:
            current, seen_block = blocks[paths[name]], True
            ids[name] = current
        elif not seen_block:
            ids[name] = 0
        elif i > last_block_param:
            ids[name] = depth + 1
        else:
            ids[name] = current
    return ids, depth


def _deepest_block(name: str) -> str:
    """`layers.1.blocks.0.attn.qkv.weight` -> `layers.1.blocks.0`: the innermost numbered container."""
    matches = list(re.finditer(r"(?:blocks|layers|stages|levels)\.\d+", name))
    return name[: matches[-1].end()]


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None, extra: Iterable[nn.Module] = ()
) -> list[dict]:
    """Groups for AdamW: no decay on 1-D parameters (norms, biases) and on `model.no_weight_decay()`;
    with `layer_decay`, each group's `lr_scale` is layer_decay ** (L + 1 - depth), so the head
    trains at the full rate and the embedding at the smallest (BEiT / MAE fine-tuning).
    """
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
        key = (decay, layer)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[1], not k[0]))]


def cosine_lr(step: int, total: int, warmup: int, lr: float, min_lr: float, warmup_lr: float) -> float:
    """Linear warmup from `warmup_lr` to `lr` over `warmup` steps, then cosine decay to `min_lr` at `total`."""
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
