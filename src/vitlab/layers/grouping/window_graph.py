"""Swin's window plan computed with tensor operations, for a graph whose height and width vary.

The cached plan (`windows.Windows.build`) decides three things from the map size with Python
integers: the padded size, whether a side is shifted (not when it fits in one window) and the
window itself (`min(window, side)`). A graph traced from it holds the traced size's decisions.
This plan takes all three in the graph instead, so that one graph serves every size:

- the window stays the scheme's `window` (the number of tokens per window, N, is a constant);
- a side of `n` is padded to `ceil(n / M) * M` (a side shorter than the window to one window);
- its shift is `where(n > M, shift, 0)`, a traced value, so the cyclic roll becomes an index
  permutation computed from the traced sizes (no `torch.roll` with a fixed amount);
- a side shorter than the window, which the cached plan covers by a smaller window of exactly
  that side, is padded to the full window here, and the positions beyond the side ("phantom"
  tokens) are left out of every softmax by an additive key mask of `PHANTOM`. The real tokens
  then see the same keys and the same relative-position rows (the offsets do not change) as in
  the smaller window. Padding of a side longer than the window is not masked, as in the cached
  plan and the references (zero tokens that take part in attention).

Used while the ONNX tracer runs and under torch.compile (`Windows.plan`, `in_graph`), and tested in eager
mode against the cached plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.layers.grouping import Size2, size_tensor
from vitlab.layers.position import relative_position_index

# Additive bias of a phantom key: exp(-1e4) is 0 in float32 and float64, and -1e4 is finite in float16.
PHANTOM = -1e4
SHIFT_MASK = -100.0  # the official value between regions the roll brought together (windows.shifted_window_mask)


@dataclass(frozen=True, eq=False)
class GraphWindowPlan:
    """A window plan whose sizes are traced values (0-dim tensors while tracing, ints in eager tests)."""

    size: tuple
    window: Size2
    num_windows: object
    gather: Tensor  # (num_windows * N,): the token filling each slot; H * W (an appended zero token) for padding
    scatter: Tensor  # (H * W,): the slot of each token
    index: Tensor  # (N * N,) rows of the relative-position table
    labels: Tensor  # (num_windows * N,) the shift region of each slot (windows.shifted_window_mask's labels)
    phantom: Tensor  # (num_windows * N,) additive: PHANTOM at the phantom slots, else 0

    @property
    def window_area(self) -> int:
        return self.window[0] * self.window[1]

    def batch_mask(self, batch: object) -> Tensor:
        """The additive mask of `batch` images' windows, (batch * num_windows, N, N): the shift mask plus the
        phantom keys, window w of every image getting mask w.

        Built at its full batched shape from per-slot tensors: no tensor here has a dimension of
        `num_windows` alone, which is 1 for a map of one window. torch.compile specialises a size it has
        to compare with 1 (broadcasting, contiguity), so such a dimension would add the guard
        `num_windows != 1` and a recompilation for every stage that becomes one window; `batch *
        num_windows` is 1 only for a batch of one, which torch.compile specialises anyway.
        """
        N = self.window_area
        labels = self.labels.repeat(batch).view(-1, N)
        mask = torch.where(labels[:, :, None] != labels[:, None, :], SHIFT_MASK, 0.0)
        return mask + self.phantom.repeat(batch).view(-1, 1, N)

    @property
    def mask(self) -> Tensor:
        """The mask of one image's windows, (num_windows, N, N)."""
        return self.batch_mask(1)


def _side(n: object, window: int, shift: int) -> tuple[object, Tensor]:
    """The padded length of a side of `n` tokens, and its shift (0 when the side fits in one window)."""
    padded = (n + window - 1) // window * window
    return padded, torch.where(size_tensor(n) > window, torch.tensor(shift), torch.tensor(0))


def _band(p: Tensor, padded: Tensor, window: int, shift: Tensor) -> Tensor:
    """Region label along one side in the rolled frame: [0, L - M) -> 0, [L - M, L - s) -> 1, [L - s, L) -> 2
    (with s = 0 the last window row is 1 and nothing is 2: no window mixes two labels)."""
    return (p >= padded - window).long() + (p >= padded - shift).long()


def graph_window_plan(size: tuple, window: Size2, shift: Size2, device: torch.device) -> GraphWindowPlan:
    """The plan of `windows.Windows` for a map of `size`, from tensor operations on the (traced) sizes.

    `size`: traced 0-dim tensors (ONNX tracer), symbolic sizes (torch.compile) or ints (tests). Shapes are
    computed from the sizes; every decision on them (shift or not, phantom or not) is a tensor operation.
    """
    H, W = size
    (wh, ww), area = window, window[0] * window[1]
    Hp, sh = _side(H, wh, shift[0])
    Wp, sw = _side(W, ww, shift[1])
    per_row = Wp // ww

    # Every slot of the windowed sequence: its window, its place in the rolled frame, the token it holds.
    slots = torch.arange(Hp * Wp)
    win, within = slots // area, slots % area
    rolled_r, rolled_c = (win // per_row) * wh + within // ww, (win % per_row) * ww + within % ww
    rows, cols = (rolled_r + sh) % Hp, (rolled_c + sw) % Wp
    gather = torch.where((rows < H) & (cols < W), rows * W + cols, H * W)

    labels = _band(rolled_r, Hp, wh, sh) * 3 + _band(rolled_c, Wp, ww, sw)
    phantom = ((rows >= H) & (size_tensor(H) < wh)) | ((cols >= W) & (size_tensor(W) < ww))

    tokens = torch.arange(H * W)  # (not a meshgrid: flattening its expanded views guards on a side of 1)
    r, c = (tokens // W - sh + Hp) % Hp, (tokens % W - sw + Wp) % Wp
    scatter = ((r // wh) * per_row + c // ww) * area + (r % wh) * ww + c % ww
    index = relative_position_index(window, window).reshape(-1)
    phantom = torch.where(phantom, PHANTOM, 0.0)
    tensors = (t.to(device) for t in (gather, scatter, index, labels, phantom))
    return GraphWindowPlan((H, W), window, (Hp // wh) * per_row, *tensors)


def graph_group(x: Tensor, plan: GraphWindowPlan) -> Tensor:
    """(B, H, W, C) -> (B * num_windows, N, C): one gather from the tokens and an appended zero token."""
    C = x.shape[-1]
    tokens = F.pad(x.flatten(1, 2), (0, 0, 0, 1))
    return tokens.index_select(1, plan.gather).flatten(0, 1).view(-1, plan.window_area, C)


def graph_ungroup(y: Tensor, plan: GraphWindowPlan) -> Tensor:
    """(B * num_windows, N, C) -> (B, H, W, C): the slot of every token, gathered back."""
    C = y.shape[-1]
    tokens = y.flatten(0, 1).view(-1, plan.num_windows * plan.window_area, C).index_select(1, plan.scatter)
    return tokens.view(-1, plan.size[0], plan.size[1], C)
