"""Pale groups: interlaced rows and interlaced columns (Pale Transformer, Wu et al. 2022), and PS-Attention.

A map of H rows split into N row groups of s rows each (H = N * s) puts row y into group
y mod N: every group holds s rows spaced N apart, spanning the whole height ("interlaced").
Columns are grouped the same way. For H not a multiple of s, N = ceil(H / s) groups are used and
the map is padded to a multiple of N rows, so some groups hold s - 1 real rows (the padding is
masked out of the softmax and cropped). A side shorter than s is one group: full attention along it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vitlab.layers.attention import AttentionLayer, attend
from vitlab.layers.grouping import (
    Grouping,
    Plan,
    Size2,
    batch_mask,
    check_axis,
    in_graph,
    pad_to_multiple,
    padded_size,
    padding_key_mask,
)
from vitlab.layers.grouping.slots import Slots, group_slots, slot_key_mask, slots_at, ungroup_slots


def image_to_row_groups(x: Tensor, groups: int) -> Tensor:
    """(B, H, W, C) -> (B * N, H/N * W, C): rows y with the same y mod N form one sequence."""
    B, H, W, C = x.shape
    x = x.view(B, H // groups, groups, W, C).transpose(1, 2)
    return x.reshape(B * groups, -1, C)


def row_groups_to_image(x: Tensor, groups: int, size: Size2) -> Tensor:
    """Inverse of `image_to_row_groups` for a map of `size` = (H, W)."""
    H, W = size
    C = x.shape[-1]
    x = x.view(-1, groups, H // groups, W, C).transpose(1, 2)
    return x.reshape(-1, H, W, C)


def image_to_column_groups(x: Tensor, groups: int) -> Tensor:
    """(B, H, W, C) -> (B * N, H * W/N, C): columns x with the same x mod N form one sequence."""
    B, H, W, C = x.shape
    x = x.view(B, H, W // groups, groups, C).permute(0, 3, 1, 2, 4)
    return x.reshape(B * groups, -1, C)


def column_groups_to_image(x: Tensor, groups: int, size: Size2) -> Tensor:
    """Inverse of `image_to_column_groups` for a map of `size` = (H, W)."""
    H, W = size
    C = x.shape[-1]
    x = x.view(-1, groups, H, W // groups, C).permute(0, 2, 3, 1, 4)
    return x.reshape(-1, H, W, C)


@dataclass(frozen=True, eq=False)
class InterlacedPlan(Plan):
    """The number of groups N on a map of `size`, the tokens per group, the key mask of its padding (None
    without padding), and, in a graph, the slots that group the map (`slots`)."""

    groups: int
    length: int
    mask: Tensor | None  # (N, 1, 1, L) bool, True at real tokens
    slots: Slots | None = None


@dataclass(frozen=True)
class InterlacedGroups(Grouping):
    """Groups of `lines` interlaced `axis` ("rows" or "columns"), lines N = ceil(side / `lines`) apart."""

    lines: int
    axis: str
    traceable = True  # N and the slots are arithmetic on the size, built in a graph (`in_graph`)

    def __post_init__(self) -> None:
        check_axis(self.axis)

    def build(self, size: Size2, device: torch.device) -> InterlacedPlan:
        rows = self.axis == "rows"
        groups = ((size[0] if rows else size[1]) + self.lines - 1) // self.lines
        if in_graph():
            return self._graph_plan(size, groups, device)
        padded = padded_size(size, (groups, 1) if rows else (1, groups))
        to_groups = image_to_row_groups if rows else image_to_column_groups
        mask = padding_key_mask(size, padded, device, lambda valid: to_groups(valid, groups))
        return InterlacedPlan(size, padded, groups, padded[0] * padded[1] // groups, mask)

    def _graph_plan(self, size: Size2, groups: object, device: torch.device) -> InterlacedPlan:
        """The groups as slots (`slots`), each of `lines` lines: a group whose last lines fall beyond the map
        holds padding there (masked). The cached plan pads the side to ceil(side / N) * N lines instead, N
        being the number of groups: fewer padding lines, the same real tokens in every group, but a size that
        sympy would have to prove equal in every view of it."""
        H, W = size
        s, rows = self.lines, self.axis == "rows"
        length = s * W if rows else H * s
        slot = torch.arange(groups * length, device=device)
        group, within = slot // length, slot % length
        token = torch.arange(H * W, device=device)
        y, x = token // W, token % W
        if rows:  # slot (group g, line j, column c) holds row j * N + g, column c
            slot_rows, slot_cols = (within // W) * groups + group, within % W
            slot_of_token = (y % groups) * length + (y // groups) * W + x
        else:  # slot (group g, row r, line j) holds row r, column j * N + g
            slot_rows, slot_cols = within // s, (within % s) * groups + group
            slot_of_token = (x % groups) * length + y * s + x // groups
        plan = slots_at(size, groups, length, slot_rows, slot_cols, slot_of_token)
        padded = (groups * s, W) if rows else (H, groups * s)
        return InterlacedPlan(size, padded, groups, length, None, plan)

    def group(self, x: Tensor, plan: InterlacedPlan) -> Tensor:
        """(B, H, W, C) -> (B * N, L, C), padded to a multiple of N lines."""
        if plan.slots is not None:
            return group_slots(x, plan.slots)
        if self.axis == "rows":
            return image_to_row_groups(pad_to_multiple(x, (plan.groups, 1), channels_last=True), plan.groups)
        return image_to_column_groups(pad_to_multiple(x, (1, plan.groups), channels_last=True), plan.groups)

    def ungroup(self, y: Tensor, plan: InterlacedPlan, batch: int | None = None) -> Tensor:
        """(B * N, L, C) -> (B, H, W, C), padding cropped (`batch`: B, needed in a graph)."""
        if plan.slots is not None:
            return ungroup_slots(y, plan.slots, batch)
        to_image = row_groups_to_image if self.axis == "rows" else column_groups_to_image
        return to_image(y, plan.groups, plan.padded)[:, : plan.size[0], : plan.size[1]]

    def key_mask(self, plan: InterlacedPlan, batch: int) -> Tensor | None:
        """The padding mask of a batch of `batch` maps: (batch * N, 1, 1, L), or None."""
        return slot_key_mask(plan.slots, batch) if plan.slots is not None else batch_mask(plan.mask, batch)


class InterlacedAttention(AttentionLayer):
    """Multi-head attention within groups of `group_size` interlaced rows (or columns).

    Takes the already projected q, k, v of its half of the channels as (B, H, W, dim) maps and
    returns (B, H, W, dim). All groups of the batch go through one `attend()` call.
    """

    def __init__(self, num_heads: int, group_size: int, axis: str, scale: float, attn_drop: float = 0.0):
        super().__init__()
        self.grouping = InterlacedGroups(group_size, axis)
        self.num_heads = num_heads
        self.scale = scale
        self.attn_drop = attn_drop

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, W, C = q.shape
        plan = self.grouping.plan((H, W), q.device)
        # Sizes named once from the plan (not -1): inferring them by division is slow for sympy under torch.compile.
        groups, heads = B * plan.groups, self.num_heads

        def group(t: Tensor) -> Tensor:  # (B, H, W, C) -> (B * groups, heads, L, C / heads)
            return self.grouping.group(t, plan).view(groups, plan.length, heads, C // heads).transpose(1, 2)

        q, k, v = group(q), group(k), group(v)
        dropout_p = self.attn_drop if self.training else 0.0
        mask = self.grouping.key_mask(plan, B)
        x = attend(q, k, v, bias=mask, scale=self.scale, dropout_p=dropout_p, store=self.attention_store)
        return self.grouping.ungroup(x.transpose(1, 2).reshape(groups, plan.length, C), plan, B)


class PaleShapedAttention(nn.Module):
    """PS-Attention in its efficient parallel form (Pale Transformer, Wu et al. 2022).

    q, k, v for all channels, then the first half attends within interlaced row groups (`rows`),
    the second within interlaced column groups (`columns`); concatenated and projected. A token's
    row group and column group together form its pale.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        pale_size: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads or num_heads % 2:
            raise ValueError(f"pale attention splits dim {dim} and num_heads {num_heads} in half: both must divide")
        scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rows = InterlacedAttention(num_heads // 2, pale_size, "rows", scale, attn_drop)
        self.columns = InterlacedAttention(num_heads // 2, pale_size, "columns", scale, attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        half = x.shape[-1] // 2
        rows = self.rows(q[..., :half], k[..., :half], v[..., :half])
        columns = self.columns(q[..., half:], k[..., half:], v[..., half:])
        return self.proj_drop(self.proj(torch.cat([rows, columns], dim=-1)))
