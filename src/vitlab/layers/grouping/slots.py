"""A grouping as one gather of token slots: how CSWin's stripes and Pale's groups are built in a graph.

The cached plans of `stripes` and `pales` group a map with views and permutes of the padded map,
sized with Python integers. In a graph whose height and width are symbolic (torch.compile,
torch.export; `in_graph`) that costs recompilations and time:

- a dimension that holds the number of groups alone (ceil(W / w) stripes, ceil(H / s) interlaced
  groups) is 1 on small maps, and torch's contiguity test of every view or reshape of such a
  shape asks whether it is 1: a guard, so a map with one group and a map with more compile into
  separate graphs (measured: the tiny CSWin compiled a third graph at 96x112, whose third stage
  has one stripe, after 144x144);
- sizes that torch infers (`view(-1, ...)`) or re-derives in another form (the padding `-W mod w`
  next to `ceil(W / w) * w`) make sympy prove that products and quotients of nested floor
  divisions agree (measured: with depths (0, 0, 1, 1) neither model's second compilation had finished
  after 180 s).

So in a graph a grouping is given by the token each slot holds: `groups` groups of `length` slots;
slot `i` holds the token at (`rows[i]`, `cols[i]`) of the map, or, where that lies beyond the map,
a zero token (padding, left out of every softmax by the key mask). `group_slots` indexes the map, a
zero column appended, with (B * groups, length) index tensors; `ungroup_slots` indexes the groups back
with (B, H, W) ones (each token's group and place in it); the key mask is built flat and viewed from one
dimension to two (the one view torch makes without comparing sizes). No tensor has the number of groups
alone as a dimension, and every size is computed once, from the traced sizes, by the scheme. The same code
runs while the ONNX tracer traces (sizes are 0-dim tensors there) and in eager mode with integers (the
tests compare it with the cached plans).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Slots:
    """`groups` groups of `length` token slots over a map of `size` (see the module docstring).

    `rows`, `cols` (groups * length,): where each slot's token lies; a padding slot points at (0, W), a
    zero column that `group_slots` appends. `real`: the slot holds a token. `group`, `within` (H, W): the
    group and the place in it of every token."""

    size: tuple
    groups: object  # int, or a traced / symbolic size
    length: object
    rows: Tensor
    cols: Tensor
    real: Tensor
    group: Tensor
    within: Tensor


def slots_at(size: tuple, groups: object, length: object, rows: Tensor, cols: Tensor, slot_of_token: Tensor) -> Slots:
    """The slots whose tokens lie at (`rows`, `cols`) (one entry per slot; beyond the map: padding), and
    `slot_of_token` (H * W,), the slot of every token in raster order."""
    H, W = size
    real = (rows < H) & (cols < W)
    rows, cols = torch.where(real, rows, 0), torch.where(real, cols, W)
    slot_of_token = slot_of_token.view(H, W)
    return Slots(size, groups, length, rows, cols, real, slot_of_token // length, slot_of_token % length)


def group_slots(x: Tensor, plan: Slots) -> Tensor:
    """(B, H, W, C) -> (B * groups, length, C): each slot's token, zeros in the padding slots.

    One indexing of the map (with a zero column appended) by (B * groups, length) index tensors: no view
    merges the batch with the groups (torch would compare B * groups with B, a guard on one group)."""
    B = x.shape[0]
    shape = (B * plan.groups, plan.length)
    images = (torch.arange(B * plan.groups * plan.length, device=x.device) // (plan.groups * plan.length)).view(shape)
    rows, cols = plan.rows.repeat(B).view(shape), plan.cols.repeat(B).view(shape)
    return F.pad(x, (0, 0, 0, 1))[images, rows, cols]


def ungroup_slots(y: Tensor, plan: Slots, batch: object) -> Tensor:
    """(B * groups, length, C) -> (B, H, W, C): every token gathered back from its slot (padding dropped)."""
    first = torch.arange(batch, device=y.device)[:, None, None] * plan.groups
    return y[first + plan.group, plan.within]


def slot_key_mask(plan: Slots, batch: object) -> Tensor:
    """(B * groups, 1, 1, length) bool, True at the keys that are tokens (not padding)."""
    return plan.real.repeat(batch).view(batch * plan.groups, plan.length)[:, None, None, :]
