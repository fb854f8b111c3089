"""Windows and shifted windows (Swin Transformer, Liu et al. 2021, section 3.2), and Swin's window attention.

Self-attention is computed inside non-overlapping M x M windows (W-MSA). Every other block
first rolls the map up-left by M // 2 (SW-MSA), so the new windows straddle the old ones' borders;
windows that the roll assembled from non-adjacent parts of the image are masked so tokens only
attend within their own part. A learned relative position bias B, indexed by the offset between
two tokens of a window, is added to the logits (eq. 4).

Any map size works: the map is zero-padded at the bottom and right to a multiple of the window
before the roll (as the official detection/segmentation code and HF transformers do), and
cropped back afterwards; a side no longer than the window is one window along that side and is
not shifted. Pad, roll and partition are applied together as one precomputed permutation of the
tokens (`window_token_order`), and so is their inverse: no torch.roll in the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vitlab.layers.attention import AttentionLayer, attend
from vitlab.layers.embed import to_2tuple
from vitlab.layers.grouping import Grouping, Plan, Size2, in_graph, padded_size
from vitlab.layers.grouping.window_graph import GraphWindowPlan, graph_group, graph_ungroup, graph_window_plan
from vitlab.layers.position import relative_position_index


def window_partition(x: Tensor, window: Size2) -> Tensor:
    """Cut a (B, H, W, C) map into windows: (B * num_windows, wh * ww, C).

    Windows come in raster order within each image, tokens in raster order within each window.
    H and W must be multiples of the window sides.
    """
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


@dataclass(frozen=True, eq=False)
class WindowGeometry(Plan):
    """How a map of `size` is cut into windows: the window and shift used (and the padded size)."""

    window: Size2
    shift: Size2

    @property
    def num_windows(self) -> int:
        return (self.padded[0] // self.window[0]) * (self.padded[1] // self.window[1])

    @property
    def window_area(self) -> int:
        return self.window[0] * self.window[1]


def window_geometry(size: Size2, window: Size2, shift: Size2) -> WindowGeometry:
    """Window and shift for a map of `size`, side by side.

    A side no longer than the window is covered by one window of exactly that length and is not
    shifted: shifting it would only wrap tokens around inside the same window. This is the
    official rule (`min(resolution) <= window_size`), applied to each side separately as timm
    does, so that e.g. a 7 x 20 map with window 7 still shifts along its width. Other sides are
    padded up to a multiple of the window.
    """
    win = tuple(min(w, s) for w, s in zip(window, size, strict=True))
    shf = tuple(0 if s <= w else t for s, w, t in zip(size, window, shift, strict=True))
    return WindowGeometry(tuple(size), padded_size(size, win), win, shf)


def _shift_bands(length: int, window: int, shift: int) -> tuple[slice, ...]:
    """The stretches of one side that the cyclic roll by `shift` brings together in the last window."""
    if shift == 0:
        return (slice(None),)
    return slice(0, -window), slice(-window, -shift), slice(-shift, None)


def shifted_window_mask(padded: Size2, window: Size2, shift: Size2) -> Tensor:
    """Additive attention mask of shifted windows: (num_windows, N, N) of 0 and -100.

    After the roll by -shift, the last window row and column hold tokens from up to 3 x 3
    regions of the (padded) map that were not neighbours in the image. Labelling the regions as
    the official code does (slices [0, -M), [-M, -s), [-s, end) of each side) and cutting the label
    map into windows, a pair of tokens with different labels gets -100: small enough that softmax
    gives it no weight, yet finite (the official value, kept for exact parity).
    """
    labels = torch.zeros(padded)
    region = 0
    for rows in _shift_bands(padded[0], window[0], shift[0]):
        for cols in _shift_bands(padded[1], window[1], shift[1]):
            labels[rows, cols] = region
            region += 1
    labels = window_partition(labels[None, :, :, None], window).squeeze(-1)  # (num_windows, N)
    different = labels.unsqueeze(1) != labels.unsqueeze(2)
    return torch.zeros(different.shape).masked_fill(different, -100.0)


def window_token_order(geometry: WindowGeometry) -> tuple[Tensor, Tensor | None, Tensor]:
    """Pad, cyclic shift and window partition of a map, as one permutation of its tokens.

    Returns `gather` (num_windows * N,): for each slot of the windowed sequence, the raster index of
    the token that fills it (0 for padding slots); `padding`: the padding slots, or None; and
    `scatter` (H * W,): for each token of the map, its slot. `x.index_select(1, gather)` on
    (B, H * W, C) tokens, padding slots zeroed, then does pad + roll(-shift) + `window_partition` in
    one copy, and `y.index_select(1, scatter)` undoes all three (crop included) in another, where
    the straightforward F.pad, torch.roll, permute and crop each copy the whole map. Computed with
    plain index arithmetic (no data-dependent shapes), so it also traces for torch.export.
    """
    (H, W), (Hp, Wp) = geometry.size, geometry.padded
    (wh, ww), (sh, sw) = geometry.window, geometry.shift

    def slot(rows: Tensor, cols: Tensor) -> Tensor:
        """Where the token at (row, col) of the padded map lands after roll(-shift) and partition."""
        rows, cols = (rows - sh) % Hp, (cols - sw) % Wp
        window = (rows // wh) * (Wp // ww) + cols // ww
        return window * (wh * ww) + (rows % wh) * ww + cols % ww

    def grid(rows: tuple[int, int], cols: tuple[int, int]) -> tuple[Tensor, Tensor]:
        # (start, stop) pairs, not range(): under torch.compile the sides may be symbolic, and a range would fix them
        r, c = torch.meshgrid(torch.arange(*rows), torch.arange(*cols), indexing="ij")
        return r.flatten(), c.flatten()

    scatter = slot(*grid((0, H), (0, W)))
    # The inverse, slot -> token, by undoing the partition and the roll (an index_put here trips inductor's
    # index bounds analysis under torch.compile).
    slots = torch.arange(Hp * Wp)
    window, within = slots // (wh * ww), slots % (wh * ww)
    rows = ((window // (Wp // ww)) * wh + within // ww + sh) % Hp
    cols = ((window % (Wp // ww)) * ww + within % ww + sw) % Wp
    gather = torch.where((rows < H) & (cols < W), rows * W + cols, 0)
    # Padding: the rows below the map, then the columns right of it.
    blocks = [grid((H, Hp), (0, Wp)), grid((0, H), (W, Wp))]
    blocks = [b for b, n in zip(blocks, ((Hp - H) * Wp, H * (Wp - W)), strict=True) if n]
    padding = slot(torch.cat([r for r, _ in blocks]), torch.cat([c for _, c in blocks])) if blocks else None
    return gather, padding, scatter


@dataclass(frozen=True, eq=False)
class WindowPlan(WindowGeometry):
    """The geometry, the token permutation, the relative-position rows and the shift mask of one map size.

    Only size-dependent integers and constants, never the gathered bias: that is a function of the
    learned table, so it is gathered again in every forward (a tiny (heads, N, N) lookup) and stays
    differentiable and current after every optimiser step.
    """

    gather: Tensor  # see window_token_order
    padding: Tensor | None
    scatter: Tensor
    index: Tensor  # (N * N,) rows of the relative-position table of the scheme's window
    mask: Tensor | None  # (num_windows, N, N) shifted-window mask, None without shift


class _PermuteTokens(torch.autograd.Function):
    """`x.index_select(1, index)` for an index that is a permutation of the live tokens.

    The backward is the inverse gather, `grad.index_select(1, inverse)`, instead of autograd's
    zero-fill + index_add (several times slower on CPU). Slots listed in `dead_out` are zeroed in the
    output (padding); tokens listed in `dead_in` feed no output slot, so get no gradient.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, index: Tensor, inverse: Tensor, dead_out: Tensor | None, dead_in: Tensor | None
    ) -> Tensor:
        ctx.save_for_backward(inverse, dead_in)
        y = x.index_select(1, index)
        return y if dead_out is None else y.index_fill_(1, dead_out, 0.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        inverse, dead_in = ctx.saved_tensors
        grad = grad.index_select(1, inverse)
        if dead_in is not None:
            grad.index_fill_(1, dead_in, 0.0)
        return grad, None, None, None, None


@dataclass(frozen=True)
class Windows(Grouping):
    """M x M windows (`window` = (Mh, Mw)), rolled up-left by `shift` first (shifted windows) when it is not 0."""

    window: Size2
    shift: Size2 = (0, 0)

    def __post_init__(self) -> None:
        if any(not 0 <= s < w for s, w in zip(self.shift, self.window, strict=True)):
            raise ValueError(f"shift {self.shift} must lie in [0, window) for window {self.window}")

    def plan(self, size: Size2, device: torch.device | str) -> WindowPlan | GraphWindowPlan:
        """As `Grouping.plan`; while the ONNX tracer or torch.compile traces (`in_graph`), the plan is computed
        in the graph from the traced sizes (`window_graph`), so that one graph serves every height and
        width. Eager runs use the cached plan."""
        if in_graph():
            return graph_window_plan(size, self.window, self.shift, torch.device(device))
        return super().plan(size, device)

    def build(self, size: Size2, device: torch.device) -> WindowPlan:
        geometry = window_geometry(size, self.window, self.shift)
        mask = shifted_window_mask(geometry.padded, geometry.window, geometry.shift) if any(geometry.shift) else None
        gather, padding, scatter = window_token_order(geometry)
        index = relative_position_index(geometry.window, self.window).reshape(-1)
        return WindowPlan(
            geometry.size,
            geometry.padded,
            geometry.window,
            geometry.shift,
            gather.to(device),
            None if padding is None else padding.to(device),
            scatter.to(device),
            index.to(device),
            None if mask is None else mask.to(device),
        )

    def group(self, x: Tensor, plan: WindowPlan) -> Tensor:
        """(B, H, W, C) -> (B * num_windows, N, C): padded, shifted and cut into windows."""
        if isinstance(plan, GraphWindowPlan):
            return graph_group(x, plan)
        B, H, W, C = x.shape
        windows = _PermuteTokens.apply(x.reshape(B, H * W, C), plan.gather, plan.scatter, plan.padding, None)
        return windows.view(-1, plan.window_area, C)

    def ungroup(self, y: Tensor, plan: WindowPlan) -> Tensor:
        """(B * num_windows, N, C) -> (B, H, W, C): the inverse of `group`, padding dropped."""
        if isinstance(plan, GraphWindowPlan):
            return graph_ungroup(y, plan)
        C = y.shape[-1]
        B = y.shape[0] // plan.num_windows
        tokens = _PermuteTokens.apply(y.reshape(B, -1, C), plan.scatter, plan.gather, None, plan.padding)
        return tokens.view(B, plan.size[0], plan.size[1], C)


def window_bias(bias: Tensor, plan: WindowPlan | GraphWindowPlan, batch: int, dtype: torch.dtype) -> Tensor:
    """The additive bias of every window's attention: the (heads, N, N) relative-position `bias` plus the plan's
    mask, window w of every image getting mask w: (batch * num_windows, heads, N, N), or (1, heads, N, N)
    without a mask. Summed in the bias's dtype, then cast to `dtype`. (Swin's and DAT's window attention.)"""
    if isinstance(plan, GraphWindowPlan):  # the mask at (batch * num_windows, N, N) already (batch_mask)
        return (bias.unsqueeze(0) + plan.batch_mask(batch).unsqueeze(1)).to(dtype)
    if plan.mask is None:
        return bias.unsqueeze(0).to(dtype)
    # Combine at (num_windows, heads, N, N), then repeat per image.
    bias = (bias.unsqueeze(0) + plan.mask.unsqueeze(1)).to(dtype)
    return bias.unsqueeze(0).expand(batch, -1, -1, -1, -1).flatten(0, 1)


class WindowAttention(AttentionLayer):
    """Window multi-head self-attention, W-MSA, or shifted W-MSA with `shift_size` > 0 (Swin eq. 4).

    Takes and returns a (B, H, W, C) map. Parameter names follow timm and the official release
    (`qkv`, `proj`, `relative_position_bias_table`). All windows of the batch go through one
    `attend()` call, with the relative position bias and the shift mask folded into its additive
    `bias`; attention capture therefore reports per-window probabilities, (B * num_windows, heads, N, N).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | Size2 = 7,
        shift_size: int | Size2 = 0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        resolution: Size2 | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.resolution = resolution  # the map size at the model's img_size (what checkpoint buffers are made for)
        self.window_size = to_2tuple(window_size)
        self.shift_size = to_2tuple(shift_size)
        self.grouping = Windows(self.window_size, self.shift_size)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        plan = self.grouping.plan((H, W), x.device)
        N = plan.window_area
        windows = self.grouping.group(x, plan)
        qkv = self.qkv(windows).view(-1, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        # index_select, not table[index]: the same gather, several times faster on CPU.
        bias = self.relative_position_bias_table.index_select(0, plan.index).view(N, N, -1).permute(2, 0, 1)
        bias = window_bias(bias, plan, B, q.dtype)
        dropout_p = self.attn_drop if self.training else 0.0
        out = attend(q, k, v, bias=bias, dropout_p=dropout_p, store=self.attention_store)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(-1, N, C)))
        return self.grouping.ungroup(out, plan)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}, shift_size={self.shift_size}"
