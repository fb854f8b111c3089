"""Cross-shaped window stripes (CSWin Transformer, Dong et al. 2022, section 3.2), and CSWin's stripe attention.

A stripe is a band of `width` adjacent columns spanning the full height (a vertical stripe) or of
`width` adjacent rows spanning the full width (a horizontal one). Stripes are ordered in raster
order over the map, one sequence per stripe, tokens in raster order inside a stripe.

A map whose side does not divide into stripes is zero-padded on the bottom/right up to a whole
number of stripes; the padded keys are masked out of the softmax and the padded outputs cropped,
so the result is *exactly* attention with a narrower last stripe. A stripe wider than the map
shrinks to the map (one stripe covers it: the same tokens as a padded wide stripe, without the padding).

In a graph (`in_graph`: torch.compile, torch.export, the ONNX tracer) the plan is built from the traced
sizes as a gather of token slots (`slots`), stripes keep their width on narrower maps (padding masked),
and LePE is one convolution over the map (`LePEStripeAttention.map_lepe`): no tensor there has the number
of stripes alone as a dimension, so one graph serves maps of one stripe per side and of several.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


def image_to_stripes(x: Tensor, stripe: Size2) -> Tensor:
    """(B, H, W, C) -> (B * H/sh * W/sw, sh * sw, C); H and W must be multiples of the stripe sides."""
    B, H, W, C = x.shape
    sh, sw = stripe
    x = x.view(B, H // sh, sh, W // sw, sw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, sh * sw, C)


def stripes_to_image(x: Tensor, stripe: Size2, size: Size2) -> Tensor:
    """Inverse of `image_to_stripes`: (B * groups, sh * sw, C) -> (B, H, W, C) for `size` = (H, W)."""
    sh, sw = stripe
    H, W = size
    C = x.shape[-1]
    x = x.view(-1, H // sh, W // sw, sh, sw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


@dataclass(frozen=True, eq=False)
class StripePlan(Plan):
    """The stripe (sh, sw) used on a map of `size`, the number of stripes per image, the key mask of its
    padding (None without padding), and, in a graph, the slots that group the map (`slots`)."""

    stripe: Size2
    groups: int
    mask: Tensor | None  # (stripes, 1, 1, sh * sw) bool, True at real tokens
    slots: Slots | None = None

    @property
    def length(self) -> int:
        return self.stripe[0] * self.stripe[1]


@dataclass(frozen=True)
class Stripes(Grouping):
    """Stripes of `width` adjacent `axis` ("rows" or "columns"); `axis` None: the whole map is one group."""

    width: int
    axis: str | None
    traceable = True

    def __post_init__(self) -> None:
        if self.axis is not None:
            check_axis(self.axis)

    def stripe(self, size: Size2) -> Size2:
        """(sh, sw) of a stripe on a map of `size`: `width` lines across, the full side along.

        In a graph (`in_graph`) the stripe keeps its `width` on a narrower map: the map is padded to it and
        the padding masked, which is the same attention (and the same LePE, zero beyond the map) as the
        narrower stripe of eager runs, without a decision on the size."""
        across = self.width if in_graph() else None
        sh = (across or min(self.width, size[0])) if self.axis == "rows" else size[0]
        sw = (across or min(self.width, size[1])) if self.axis == "columns" else size[1]
        return sh, sw

    def build(self, size: Size2, device: torch.device) -> StripePlan:
        if self.axis is None:  # one group, nothing padded: a view (also in a graph)
            return StripePlan(size, size, size, 1, None)
        stripe = self.stripe(size)
        if in_graph():
            return self._graph_plan(size, stripe, device)
        padded = padded_size(size, stripe)
        mask = padding_key_mask(size, padded, device, lambda valid: image_to_stripes(valid, stripe))
        return StripePlan(size, padded, stripe, (padded[0] // stripe[0]) * (padded[1] // stripe[1]), mask)

    def _graph_plan(self, size: Size2, stripe: Size2, device: torch.device) -> StripePlan:
        """The stripes as slots (`slots`): ceil(side / width) stripes across, each `width` lines wide."""
        H, W = size
        (sh, sw), width = stripe, self.width
        rows = self.axis == "rows"
        count = (H + width - 1) // width if rows else (W + width - 1) // width
        length = sh * sw
        slot = torch.arange(count * length, device=device)
        token = torch.arange(H * W, device=device)
        if rows:  # horizontal stripes in raster order are the rows of the padded map, in order
            plan = slots_at(size, count, length, slot // W, slot % W, token)
        else:  # slot (stripe j, row r, column i of the stripe) holds the token at (r, j * width + i)
            within = slot % length
            cols = (slot // length) * width + within % width
            r, c = token // W, token % W
            plan = slots_at(size, count, length, within // width, cols, (c // width) * length + r * width + c % width)
        padded = (count * width, W) if rows else (H, count * width)
        return StripePlan(size, padded, stripe, count, None, plan)

    def group(self, x: Tensor, plan: StripePlan) -> Tensor:
        """(B, H, W, C) -> (B * stripes, sh * sw, C), padded to whole stripes."""
        if plan.slots is not None:
            return group_slots(x, plan.slots)
        if self.axis is None:  # the whole map (a view; H // H would be left to sympy in a graph)
            return x.reshape(x.shape[0], plan.length, x.shape[-1])
        return image_to_stripes(pad_to_multiple(x, plan.stripe, channels_last=True), plan.stripe)

    def ungroup(self, y: Tensor, plan: StripePlan, batch: int | None = None) -> Tensor:
        """(B * stripes, sh * sw, C) -> (B, H, W, C), padding cropped (`batch`: B, needed in a graph)."""
        if plan.slots is not None:
            return ungroup_slots(y, plan.slots, batch)
        if self.axis is None:
            return y.view(-1 if batch is None else batch, *plan.size, y.shape[-1])
        return stripes_to_image(y, plan.stripe, plan.padded)[:, : plan.size[0], : plan.size[1]]

    def key_mask(self, plan: StripePlan, batch: int) -> Tensor | None:
        """The padding mask of a batch of `batch` maps: (batch * stripes, 1, 1, sh * sw), or None."""
        return slot_key_mask(plan.slots, batch) if plan.slots is not None else batch_mask(plan.mask, batch)


class LePEStripeAttention(AttentionLayer):
    """Multi-head attention within stripes of one orientation, plus LePE (CSWin sections 3.2-3.3).

    `axis` "columns" gives vertical stripes of `stripe_width` columns (full height), "rows"
    horizontal ones of `stripe_width` rows (full width), None the whole map (the last stage).
    Takes the already projected q, k, v of this branch as (B, H, W, dim) maps and returns
    (B, H, W, dim). LePE (locally-enhanced positional encoding) is a depthwise 3x3 convolution of V
    inside each stripe, zero-padded at the stripe borders (and so beyond the map edge alike), added
    to the attention output.
    """

    def __init__(self, dim: int, num_heads: int, stripe_width: int, axis: str | None, scale: float, attn_drop: float):
        super().__init__()
        self.grouping = Stripes(stripe_width, axis)
        self.num_heads = num_heads
        self.scale = scale
        self.attn_drop = attn_drop
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, W, C = q.shape
        plan = self.grouping.plan((H, W), q.device)
        heads = self.num_heads
        # Sizes named once from the plan (not -1): inferring them by division is slow for sympy under torch.compile.
        groups, length, head_dim = B * plan.groups, plan.length, C // heads

        def group(t: Tensor) -> Tensor:  # (B, H, W, C) -> (B * stripes, heads, L, C / heads)
            return self.grouping.group(t, plan).view(groups, length, heads, head_dim).transpose(1, 2)

        mask = self.grouping.key_mask(plan, B)
        dropout_p = self.attn_drop if self.training else 0.0
        if plan.slots is not None:  # in a graph: LePE over the map (`map_lepe`), added after ungrouping
            lepe = self.map_lepe(v)
            q, k, v = group(q), group(k), group(v)
            x = attend(q, k, v, bias=mask, scale=self.scale, dropout_p=dropout_p, store=self.attention_store)
            return self.grouping.ungroup(x.transpose(1, 2).reshape(groups, length, C), plan, B) + lepe
        q, k, v = group(q), group(k), group(v)
        # LePE: a depthwise conv of V over each stripe seen as a small image, zero-padded at its borders.
        v_map = v.transpose(2, 3).reshape(groups, C, *plan.stripe)
        lepe = self.get_v(v_map).view(groups, heads, head_dim, length).transpose(2, 3)
        x = attend(q, k, v, bias=mask, scale=self.scale, dropout_p=dropout_p, store=self.attention_store) + lepe
        return self.grouping.ungroup(x.transpose(1, 2).reshape(groups, length, C), plan, B)

    def map_lepe(self, v: Tensor) -> Tensor:
        """LePE of every stripe, computed over the whole map v (B, H, W, C) -> (B, H, W, C) (used in a graph).

        Within a stripe the 3x3 kernel sees zeros beyond the stripe's borders. Over the map, the only
        neighbours that lie in another stripe are across the borders between stripes, one line either side:
        the kernel's first line (offset -1 across the stripes) reads the line before, which belongs to another
        stripe when it is the last line of its stripe, and its last line (+1) reads the next one, another
        stripe when it is a first line. So the map goes through one depthwise convolution with three inputs
        per channel: v for the kernel's middle line, v with every stripe's last line zeroed for its first
        line, v with every first line zeroed for its last line. The same products as the stripes' convolution
        (summed in another order); the map's batch and sides are the convolution's, with no dimension holding
        the number of stripes (which costs guards under torch.compile, see `slots`). (The whole-map branch,
        axis None, has no stripes to separate and takes the cached plan's path.)"""
        B, H, W, C = v.shape
        weight, bias = self.get_v.weight, self.get_v.bias  # (C, 1, 3, 3)
        rows, width = self.grouping.axis == "rows", self.grouping.width
        line = torch.arange(H if rows else W, device=v.device) % width
        keep = torch.stack([torch.ones_like(line, dtype=torch.bool), line != width - 1, line != 0], dim=-1)
        keep = keep.to(v.dtype)[:, None, None, :] if rows else keep.to(v.dtype)[None, :, None, :]  # (H|1, W|1, 1, 3)
        inputs = (v[..., None] * keep).view(B, H, W, 3 * C).permute(0, 3, 1, 2)  # (B, 3C, H, W), channels last
        lines = torch.eye(3, dtype=weight.dtype, device=weight.device)[[1, 0, 2]]  # middle, first, last line
        split = weight * (lines[:, :, None] if rows else lines[:, None, :])  # (C, 3, 3, 3): one line each
        return F.conv2d(inputs, split, bias, padding=1, groups=C).permute(0, 2, 3, 1)
