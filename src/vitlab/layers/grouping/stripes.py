"""Cross-shaped window stripes (CSWin Transformer, Dong et al. 2022, section 3.2), and CSWin's stripe attention.

A stripe is a band of `width` adjacent columns spanning the full height (a vertical stripe) or of
`width` adjacent rows spanning the full width (a horizontal one). Stripes are ordered in raster
order over the map, one sequence per stripe, tokens in raster order inside a stripe.

A map whose side does not divide into stripes is zero-padded on the bottom/right up to a whole
number of stripes; the padded keys are masked out of the softmax and the padded outputs cropped,
so the result is *exactly* attention with a narrower last stripe. A stripe wider than the map
shrinks to the map (one stripe covers it: the same tokens as a padded wide stripe, without the padding).
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
    """The stripe (sh, sw) used on a map of `size`, and the key mask of its padding (None without padding)."""

    stripe: Size2
    mask: Tensor | None  # (stripes, 1, 1, sh * sw) bool, True at real tokens


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
        stripe = self.stripe(size)
        padded = padded_size(size, stripe)
        mask = padding_key_mask(size, padded, device, lambda valid: image_to_stripes(valid, stripe))
        return StripePlan(size, padded, stripe, mask)

    def group(self, x: Tensor, plan: StripePlan) -> Tensor:
        """(B, H, W, C) -> (B * stripes, sh * sw, C), padded to whole stripes."""
        return image_to_stripes(pad_to_multiple(x, plan.stripe, channels_last=True), plan.stripe)

    def ungroup(self, y: Tensor, plan: StripePlan) -> Tensor:
        """(B * stripes, sh * sw, C) -> (B, H, W, C), padding cropped."""
        return stripes_to_image(y, plan.stripe, plan.padded)[:, : plan.size[0], : plan.size[1]]


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
        length, heads = plan.stripe[0] * plan.stripe[1], self.num_heads

        def group(t: Tensor) -> Tensor:  # (B, H, W, C) -> (B * stripes, heads, L, C / heads)
            return self.grouping.group(t, plan).view(-1, length, heads, C // heads).transpose(1, 2)

        q, k, v = group(q), group(k), group(v)
        # LePE: a depthwise conv of V over each stripe seen as a small image, zero-padded at its borders.
        v_map = v.transpose(2, 3).reshape(-1, C, *plan.stripe)
        lepe = self.get_v(v_map).view(-1, heads, C // heads, length).transpose(2, 3)
        mask = batch_mask(plan.mask, B)
        dropout_p = self.attn_drop if self.training else 0.0
        x = attend(q, k, v, bias=mask, scale=self.scale, dropout_p=dropout_p, store=self.attention_store) + lepe
        return self.grouping.ungroup(x.transpose(1, 2).reshape(-1, length, C), plan)
