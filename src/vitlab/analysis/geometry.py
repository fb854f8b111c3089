"""Where each attention layer's queries and keys lie in the image: one small "geometry" per layer type.

`capture_attention` hands back probabilities in whatever shape a layer computes them (per window,
per stripe, per pixel neighbourhood, against sampled points). A geometry turns one recorded call
into a `LayerAttention`: the probabilities made dense, (batch, heads, queries, keys), each row
summing to 1 over the keys, plus `Tokens` saying where the queries and the keys sit in the image
(a raster grid, sampled points, or no place at all, e.g. a class token or a visual token). Every
tool downstream (pictures, attention distance, entropy, rollout) reads only that.

A family adds its maps by registering a function for its attention layer class:

    @register_geometry(MyAttention)
    def my_geometry(call: LayerCall) -> LayerAttention: ...

`LayerCall` holds the module, the recorded probabilities, the shapes of the layer's inputs, the
image size and the positions the most recent `PositionSampler` reported. Layers built on a
grouping (`layers/grouping/`) need no code of their own: `grouped_geometry` recovers who attends to
whom by grouping a map of token numbers with the layer's own `grouping`. Dense matrices cost
(tokens)^2 per head: meant for analysis, not for production inference at high resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vitlab.layers.attention import MultiHeadAttention
from vitlab.layers.grouping.pales import InterlacedAttention
from vitlab.layers.grouping.reduction import SpatialReductionAttention
from vitlab.layers.grouping.stripes import LePEStripeAttention
from vitlab.layers.grouping.windows import WindowAttention

Size2 = tuple[int, int]


@dataclass
class Tokens:
    """Where a sequence of tokens lies in the image.

    `prefix` tokens come first and have no place (class, distillation tokens); the rest lie on a
    raster `grid` (h, w) covering the image, or at `points` (batch, 1 or heads, n, 2) (x, y) in
    image pixels (the image spans [0, W] x [0, H]), or nowhere (`grid` and `points` both None:
    visual tokens, the class tokens of layers). `label` names what the tokens are. `cell` is a grid
    cell's (height, width) in pixels, by default the image divided by the grid; a grid padded past
    the image (Swin's windows attend to zero padding as to any token) gives it explicitly. `offset`
    (y, x) shifts the grid's cells in pixels (T2T's soft splits: padded windows centred off the cells).
    """

    count: int
    prefix: int = 0
    grid: Size2 | None = None
    points: Tensor | None = None
    label: str = "token"
    cell: tuple[float, float] | None = None
    offset: tuple[float, float] = (0.0, 0.0)

    @property
    def spatial(self) -> bool:
        return self.grid is not None or self.points is not None

    def positions(self, image_size: Size2) -> Tensor:
        """(batch or 1, heads or 1, count - prefix, 2) (x, y) pixel centres of the placed tokens."""
        if self.points is not None:
            return self.points
        if self.grid is None:
            raise ValueError(f"these {self.label}s have no place in the image")
        h, w = self.grid
        cell_h, cell_w = self.cell or (image_size[0] / h, image_size[1] / w)
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) * cell_h + self.offset[0]
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) * cell_w + self.offset[1]
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return grid.reshape(1, 1, h * w, 2)


@dataclass
class LayerAttention:
    """One call of one attention layer, dense: `probs` (batch, heads, queries, keys), rows summing to 1."""

    name: str
    kind: str
    probs: Tensor
    queries: Tokens
    keys: Tokens
    image_size: Size2


@dataclass
class LayerCall:
    """What a geometry reads: the module, one recorded call, its input shapes, the image."""

    name: str
    module: nn.Module
    model: nn.Module
    probs: Tensor
    input_shapes: tuple[tuple[int, ...] | None, ...]
    image_size: Size2
    positions: Tensor | None = None  # the latest positions a PositionSampler reported before this call
    own_positions: Tensor | None = None  # the positions this layer itself reported for this call
    extra: dict = field(default_factory=dict)


Geometry = Callable[[LayerCall], LayerAttention]
GEOMETRIES: dict[type, Geometry] = {}


def register_geometry(*classes: type) -> Callable[[Geometry], Geometry]:
    """Register a geometry for attention layer classes (subclasses inherit it unless they register their own)."""

    def wrap(fn: Geometry) -> Geometry:
        for cls in classes:
            GEOMETRIES[cls] = fn
        return fn

    return wrap


def geometry_for(module: nn.Module) -> Geometry | None:
    for cls in type(module).__mro__:
        if cls in GEOMETRIES:
            return GEOMETRIES[cls]
    return None


def factor_grid(count: int, image_size: Size2) -> Size2:
    """The (h, w) with h * w = `count` whose aspect is closest to the image's (a token sequence's grid)."""
    target = math.log(image_size[0] / image_size[1])
    pairs = [(h, count // h) for h in range(1, count + 1) if count % h == 0]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1]) - target))


def scatter_groups(probs: Tensor, query_ids: Tensor, key_ids: Tensor, tokens: int) -> Tensor:
    """Per-group probabilities (batch * G, heads, Lq, Lk) -> dense (batch, heads, tokens, tokens).

    `query_ids` (G, Lq) and `key_ids` (G, Lk) number each group member's token from 1 (0: padding,
    dropped). Pairs that share no group get 0.
    """
    groups = query_ids.shape[0]
    batch, heads = probs.shape[0] // groups, probs.shape[1]
    flat = (query_ids[:, :, None] * (tokens + 1) + key_ids[:, None, :]).reshape(-1).to(probs.device)
    values = probs.reshape(batch, groups, heads, -1).transpose(1, 2).reshape(batch, heads, -1)
    dense = probs.new_zeros(batch, heads, (tokens + 1) ** 2)
    dense.index_add_(2, flat, values)
    return dense.view(batch, heads, tokens + 1, tokens + 1)[:, :, 1:, 1:]


def token_numbers(grouping, size: Size2, channels_last: bool) -> Tensor:
    """Each group's token numbers (from 1; 0 for padding), by grouping a map of the numbers themselves."""
    numbers = torch.arange(1, size[0] * size[1] + 1, dtype=torch.float64).view(1, *size, 1)
    plan = grouping.plan(size, "cpu")
    grouped = grouping.group(numbers if channels_last else numbers.permute(0, 3, 1, 2), plan)
    return grouped.round().long().squeeze(-1 if channels_last else 1)


@register_geometry(WindowAttention, LePEStripeAttention, InterlacedAttention)
def grouped_geometry(call: LayerCall) -> LayerAttention:
    """Local attention on a (B, H, W, C) map through `module.grouping`: windows, shifted windows, stripes, pales.

    The grid is the padded map (bottom and right), so that attention paid to zero padding, which
    Swin's and DAT's windows do not mask, is shown where it goes; masked padding simply gets 0.
    """
    _, H, W, _ = call.input_shapes[0]
    padded = call.module.grouping.plan((H, W), "cpu").padded
    ids = token_numbers(call.module.grouping, padded, channels_last=True)
    probs = scatter_groups(call.probs, ids, ids, padded[0] * padded[1])
    cell = (call.image_size[0] / H, call.image_size[1] / W)
    grid = Tokens(padded[0] * padded[1], grid=padded, cell=cell)
    return LayerAttention(call.name, type(call.module.grouping).__name__.lower(), probs, grid, grid, call.image_size)


def global_tokens(call: LayerCall, count: int) -> Tokens:
    """Tokens of a (B, N, C) sequence: the model's prefix tokens, then a grid (or the sampled points)."""
    prefix = getattr(call.model, "num_prefix_tokens", 0)
    if call.positions is not None and call.positions.shape[-2] <= count:
        points = call.positions
        return Tokens(count, prefix=count - points.shape[-2], points=points, label="sampled token")
    prefix = prefix if count > prefix else 0
    return Tokens(count, prefix=prefix, grid=factor_grid(count - prefix, call.image_size))


@register_geometry(MultiHeadAttention)
def global_geometry(call: LayerCall) -> LayerAttention:
    """Global self-attention over a token sequence (ViT, DeiT, T2T, ConViT's MHSA, CeiT, PS-ViT)."""
    tokens = global_tokens(call, call.probs.shape[-1])
    return LayerAttention(call.name, "global", call.probs, tokens, tokens, call.image_size)


@register_geometry(SpatialReductionAttention)
def reduction_geometry(call: LayerCall) -> LayerAttention:
    """PVT: every query on the map attends to keys of a spatially reduced map (or to all tokens)."""
    module, shape = call.module, call.input_shapes[0]
    if len(shape) == 3:  # tokens: plain global attention (PVT v1's last stage, with its class token)
        return global_geometry(call)
    H, W = shape[1], shape[2]
    if module.pool is not None:
        pooled = module.pool.output_size
        key_grid = (pooled, pooled) if isinstance(pooled, int) else tuple(pooled)
    elif module.reduces:
        key_grid = (H // module.sr_ratio, W // module.sr_ratio)
    else:
        key_grid = (H, W)
    queries = Tokens(H * W, grid=(H, W))
    keys = Tokens(key_grid[0] * key_grid[1], grid=key_grid)
    kind = "spatial-reduction" if module.reduces else "global"
    return LayerAttention(call.name, kind, call.probs, queries, keys, call.image_size)


def map_to_image(points: Tensor, map_size: Size2, image_size: Size2) -> Tensor:
    """(x, y) pixel indices of a map (centres at integers) -> image pixels, the map covering the image."""
    scale = torch.tensor([image_size[1] / map_size[1], image_size[0] / map_size[0]], dtype=torch.float64)
    return (points.double() + 0.5) * scale
