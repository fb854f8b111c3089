"""Token groupings: who attends to whom in local attention, behind one interface.

A grouping turns a map into a batch of independent token sequences, so that an attention layer
projects q, k and v, groups them, calls `attend()` once on the whole batch of groups and ungroups
the result. Every scheme is a frozen dataclass of its parameters with three methods:

    plan = scheme.plan((H, W), device)  # everything size-dependent, built once, then cached
    groups = scheme.group(x, plan)      # the map -> (batch * groups, tokens, channels)
    y = scheme.ungroup(groups, plan)    # back to the map, padding cropped

The schemes, one module each: `windows` (Swin's windows and shifted windows), `stripes` (CSWin),
`pales` (Pale's interlaced rows and columns), `axes` (Axial-DeepLab), `neighbourhoods` (SASA),
`deformable` (DAT's reference points moved by learned offsets). `reduction` holds PVT's
spatial-reduction attention, a shared layer rather than a scheme: every token attends to keys
from a reduced map, so nothing is grouped or planned.

Plans (padded size, masks, index tensors) live in one bounded LRU cache shared by every scheme
and layer, keyed by (scheme, map size, device): layers with equal parameters share their plans.
Plans are built outside inference mode and without autograd, so a plan first built under
`torch.inference_mode()` still serves a training step later; while torch.export or torch.compile
traces, plans are built into the traced graph and never cached.

Maps whose sides do not divide into whole groups are zero-padded on the bottom and right
(`pad_to_multiple`, the one padding helper); the padded tokens are excluded from every softmax
by a key mask held in the plan, so they never change what the real tokens compute, and their
outputs are cropped away.

The one axis vocabulary (`AXES`): a group is made of "rows" or of "columns": one of them (axial),
a band of adjacent ones (stripes) or an interlaced set (pales).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.layers.position import exporting as is_tracing  # the one test for "a graph is being exported"

Size2 = tuple[int, int]

AXES = ("rows", "columns")


def check_axis(axis: str) -> None:
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")


def padded_size(size: Size2, multiple: Size2) -> Size2:
    """The smallest (H', W') >= `size` whose sides divide by `multiple` (also of traced or symbolic sizes)."""
    return tuple((s + m - 1) // m * m for s, m in zip(size, multiple, strict=True))


def in_graph() -> bool:
    """Whether plans are built in the graph from the traced sizes: while the ONNX tracer runs, and while
    torch.compile or torch.export traces. There a Python decision on a size would hold only for the traced
    size (ONNX), or add a guard and so a recompilation for every size on its other side (torch.compile)."""
    return is_tracing() or torch.compiler.is_compiling()


def size_tensor(n: int | Tensor) -> Tensor:
    """A size as a 0-dim tensor: the traced value itself under the ONNX tracer, else (an int, or a symbolic
    size under torch.compile) a tensor filled with it. Comparing or dividing it then adds no guard on the
    size, where `torch.as_tensor(n)` of a symbolic size would fix it to the traced value."""
    return n if isinstance(n, Tensor) else torch.full((), n)


def size_max(n: int | Tensor, low: int) -> int | Tensor:
    """max(n, low) of a size that may be traced (a 0-dim tensor under the ONNX tracer) or symbolic
    (torch.compile, torch.export), without a Python comparison that would freeze or guard it."""
    return torch.clamp(n, min=low) if isinstance(n, Tensor) else torch.sym_max(n, low)


def size_min(n: int | Tensor, high: int) -> int | Tensor:
    """min(n, high), as `size_max`."""
    return torch.clamp(n, max=high) if isinstance(n, Tensor) else torch.sym_min(n, high)


def pad_to_multiple(x: Tensor, multiple: Size2, channels_last: bool = False) -> Tensor:
    """Zero-pad a map on the bottom and right so both sides divide by `multiple`.

    NCHW by default; (B, H, W, C) with `channels_last`. While a graph is traced for export the pad is
    always recorded (possibly of zero), so that the graph pads inputs of sizes other than the traced one; so
    it is under torch.compile (no guard on the sides' divisibility, which would recompile per size).
    """
    height, width = x.shape[-3:-1] if channels_last else x.shape[-2:]
    pad_h, pad_w = -height % multiple[0], -width % multiple[1]
    if is_tracing() or torch.compiler.is_compiling() or pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h))
    return x


def padding_key_mask(
    size: Size2, padded: Size2, device: torch.device, to_groups: Callable[[Tensor], Tensor]
) -> Tensor | None:
    """Bool key mask (groups, 1, 1, L), True at real tokens, of a map of `size` padded to `padded`.

    `to_groups` groups a (1, H', W', 1) map as the scheme groups tokens. None when nothing is
    padded, so that unpadded maps run the fused kernel without a mask. Of traced or symbolic sizes
    (`in_graph`), the mask is always made, by comparisons in the graph (all True where nothing is padded).
    """
    if in_graph():
        rows = torch.arange(padded[0], device=device) < size[0]
        cols = torch.arange(padded[1], device=device) < size[1]
        return to_groups((rows[:, None] & cols[None, :]).float()[None, :, :, None])[..., 0].bool()[:, None, None, :]
    if size == padded:
        return None
    valid = torch.zeros(1, padded[0], padded[1], 1, device=device)
    valid[:, : size[0], : size[1]] = 1.0
    return to_groups(valid)[..., 0].bool()[:, None, None, :]


def batch_mask(mask: Tensor | None, batch: int) -> Tensor | None:
    """Repeat a per-group mask (groups, 1, 1, L) for a batch laid out batch-major: (batch * groups, 1, 1, L)."""
    return None if mask is None else mask.repeat(batch, 1, 1, 1)


@dataclass(frozen=True, eq=False)
class Plan:
    """What a scheme needs to group a map of `size`: at least the size it pads to. Schemes extend it."""

    size: Size2
    padded: Size2


class PlanCache:
    """A bounded least-recently-used cache of plans, safe to share between threads.

    `maxsize` bounds memory whatever sizes come in (multi-scale training, detection): a model
    needs about two plans per stage and input size, so the default of 64 holds every plan of
    several input sizes of the largest model at once.
    """

    def __init__(self, maxsize: int = 64):
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._plans: OrderedDict[Hashable, Plan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Plan]) -> Plan:
        """The plan under `key`, built by `build()` on first use; the least recently used one is evicted when full."""
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self.hits += 1
                self._plans.move_to_end(key)
                return plan
        plan = build()
        with self._lock:
            self.misses += 1
            self._plans[key] = plan
            self._plans.move_to_end(key)
            while len(self._plans) > self.maxsize:
                self._plans.popitem(last=False)
        return plan

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._plans)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._plans


PLANS = PlanCache(maxsize=64)


class Grouping(ABC):
    """A token grouping; subclasses are frozen (hashable) dataclasses of the scheme's parameters.

    `traceable` schemes build their plans with operations that also hold for traced sizes (the ONNX
    tracer's 0-dim tensors, torch.compile's symbolic sizes); such plans are then built in the graph
    (`in_graph`), so that one graph serves every height and width.
    """

    traceable = False

    def plan(self, size: Size2, device: torch.device | str) -> Plan:
        """The plan for a map of `size` on `device`, from the shared cache (built on first use)."""
        if self.traceable and in_graph():
            return self.build(tuple(size), torch.device(device))
        size = (int(size[0]), int(size[1]))
        device = torch.device(device)
        if torch.compiler.is_compiling():
            # Under torch.export or torch.compile the tensors made here belong to the trace (fake or
            # symbolic): they become constants of the traced graph and must not outlive it in the cache.
            return self.build(size, device)
        return PLANS.get((self, size, device), lambda: self._build_for_cache(size, device))

    def _build_for_cache(self, size: Size2, device: torch.device) -> Plan:
        # Ordinary tensors even when first asked for under inference_mode, so that a later
        # training step can use (and save for backward) the same cached indices and masks.
        with torch.inference_mode(False), torch.no_grad():
            return self.build(size, device)

    @abstractmethod
    def build(self, size: Size2, device: torch.device) -> Plan:
        """Compute the plan for a map of `size` (called by `plan` on a cache miss)."""

    @abstractmethod
    def group(self, x: Tensor, plan: Plan) -> Tensor:
        """The map -> a batch of token sequences."""

    @abstractmethod
    def ungroup(self, y: Tensor, plan: Plan) -> Tensor:
        """The inverse of `group`, padding cropped."""
