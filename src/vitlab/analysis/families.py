"""The geometries of the families whose attention layers live in their own model files.

Importing this module registers them (`vitlab.analysis` does). Each function reads one recorded
call (see `geometry.LayerCall`) and returns the dense probabilities with where queries and keys lie.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitlab.analysis.geometry import (
    LayerAttention,
    LayerCall,
    Size2,
    Tokens,
    factor_grid,
    grouped_geometry,
    map_to_image,
    register_geometry,
    scatter_groups,
    token_numbers,
)
from vitlab.analysis.maps import EMBEDDING_ATTENTION, SAMPLERS
from vitlab.models.axial import AxialAttention
from vitlab.models.ceit import LayerClassTokenAttention
from vitlab.models.convit import GatedPositionalSelfAttention
from vitlab.models.dat import DeformableAttention, LocalAttention
from vitlab.models.psvit import STEM_STRIDE, ProgressiveSampler
from vitlab.models.sasa import LocalSelfAttention
from vitlab.models.t2t import TokenAttention, TokenPerformer, TokensToToken, unfold_size
from vitlab.models.vt import Projector, Tokenizer, TokenTransformer

register_geometry(LocalAttention)(grouped_geometry)  # DAT's local (shifted) windows


@register_geometry(AxialAttention)
def axial_geometry(call: LayerCall) -> LayerAttention:
    """Axial-DeepLab: each pixel attends along its column ("columns") or its row ("rows") of an NCHW map."""
    _, _, H, W = call.input_shapes[0]
    ids = token_numbers(call.module.grouping, (H, W), channels_last=False)
    grid = Tokens(H * W, grid=(H, W))
    probs = scatter_groups(call.probs, ids, ids, H * W)
    return LayerAttention(call.name, f"axial-{call.module.grouping.axis}", probs, grid, grid, call.image_size)


@register_geometry(LocalSelfAttention)
def neighbourhood_geometry(call: LayerCall) -> LayerAttention:
    """SASA: each pixel attends to the k x k neighbourhood centred on it (neighbours off the map get 0)."""
    _, _, H, W = call.input_shapes[0]
    module = call.module
    numbers = torch.arange(1, H * W + 1, dtype=torch.float64).view(1, 1, H, W)
    keys = module.grouping.group(numbers, module.grouping.plan((H, W), "cpu"))[..., 0].round().long()
    queries = torch.arange(1, H * W + 1).view(-1, 1)
    grid = Tokens(H * W, grid=(H, W))
    probs = scatter_groups(call.probs, queries, keys, H * W)
    return LayerAttention(call.name, "neighbourhood", probs, grid, grid, call.image_size)


@register_geometry(GatedPositionalSelfAttention)
def gpsa_geometry(call: LayerCall) -> LayerAttention:
    """ConViT's GPSA: global over the patch map, the gated mix of content and positional attention."""
    _, H, W, _ = call.input_shapes[0]
    grid = Tokens(H * W, grid=(H, W))
    return LayerAttention(call.name, "gated-positional", call.probs, grid, grid, call.image_size)


@register_geometry(DeformableAttention)
def deformable_geometry(call: LayerCall) -> LayerAttention:
    """DAT: queries on the map, keys at the sampled points (drawn as points), one set per offset group."""
    _, H, W, _ = call.input_shapes[0]
    module, sampled = call.module, call.own_positions  # (B, groups, Hk, Wk, 2), pixels of the H x W map
    points = map_to_image(sampled.flatten(2, 3), (H, W), call.image_size)
    points = points.repeat_interleave(module.heads // module.groups, dim=1)
    queries = Tokens(H * W, grid=(H, W))
    keys = Tokens(points.shape[-2], points=points, label="sampled point")
    return LayerAttention(call.name, "deformable", call.probs, queries, keys, call.image_size)


@register_geometry(LayerClassTokenAttention)
def layer_class_token_geometry(call: LayerCall) -> LayerAttention:
    """CeiT's LCA: the last layer's class token attends to the class tokens of all layers (no place in the image)."""
    count = call.probs.shape[-1]
    queries = Tokens(1, label="last class token")
    keys = Tokens(count, label="layer class token")
    return LayerAttention(call.name, "layer-class-tokens", call.probs, queries, keys, call.image_size)


def visual_tokens(count: int) -> Tokens:
    return Tokens(count, label="visual token")


@register_geometry(Tokenizer)
def tokenizer_geometry(call: LayerCall) -> LayerAttention:
    """VT's tokenizer: each visual token's spatial attention over the pixels of the map (rows over HW)."""
    _, pixels, _ = call.input_shapes[0]
    grid = Tokens(pixels, grid=factor_grid(pixels, call.image_size))
    tokens = visual_tokens(call.probs.shape[-2])
    return LayerAttention(call.name, "tokenizer", call.probs, tokens, grid, call.image_size)


@register_geometry(Projector)
def projector_geometry(call: LayerCall) -> LayerAttention:
    """VT's projector: each pixel reads the visual tokens."""
    _, pixels, _ = call.input_shapes[0]
    grid = Tokens(pixels, grid=factor_grid(pixels, call.image_size))
    tokens = visual_tokens(call.probs.shape[-1])
    return LayerAttention(call.name, "projector", call.probs, grid, tokens, call.image_size)


@register_geometry(TokenTransformer)
def token_transformer_geometry(call: LayerCall) -> LayerAttention:
    """VT's transformer among the visual tokens."""
    tokens = visual_tokens(call.probs.shape[-1])
    return LayerAttention(call.name, "visual-tokens", call.probs, tokens, tokens, call.image_size)


def _progressive_points(module: nn.Module, positions: Tensor, image_size: Size2) -> Tensor:
    """PS-ViT's points, (x, y) pixels of the stride-4 stem map, as image pixels: (batch, 1, n, 2)."""
    stem = (-(-image_size[0] // STEM_STRIDE), -(-image_size[1] // STEM_STRIDE))
    return map_to_image(positions, stem, (stem[0] * STEM_STRIDE, stem[1] * STEM_STRIDE)).unsqueeze(1)


SAMPLERS[ProgressiveSampler] = _progressive_points


def soft_split_tokens(image_size: Size2, splits: list[tuple[int, int, int]]) -> Tokens:
    """The tokens after the soft splits `splits` (kernel, stride, padding) of an image: their grid and
    the centres of the windows they unfold.

    A split of a map whose cells are `cell` pixels wide and start at `offset` gives cells stride x
    cell wide; window i covers cells i s - p .. i s - p + k - 1, so its centre lies at
    offset + (i s - p + k / 2) cell, i.e. the new offset is offset + (k / 2 - p - s / 2) cell.
    """
    grid, cell, offset = tuple(image_size), (1.0, 1.0), (0.0, 0.0)
    for kernel, stride, padding in splits:
        grid = tuple(unfold_size(side, (kernel, stride, padding)) for side in grid)
        offset = tuple(o + (kernel / 2 - padding - stride / 2) * c for o, c in zip(offset, cell, strict=True))
        cell = (cell[0] * stride, cell[1] * stride)
    return Tokens(grid[0] * grid[1], grid=grid, cell=cell, offset=offset, label="soft-split token")


@register_geometry(TokenAttention, TokenPerformer)
def tokens_to_token_geometry(call: LayerCall) -> LayerAttention:
    """T2T-ViT's T2T layers: one head, global over the tokens of the soft split before them (the first
    layer: the image's split, the second: the re-structurized map's), each at its window's centre.
    The Performer's map is the implicit one its output is made with (see `TokenPerformer`)."""
    t2t = next(m for m in call.model.modules() if isinstance(m, TokensToToken))
    stage = 1 if any(call.module is m for m in t2t.attention1.modules()) else 2
    tokens = soft_split_tokens(call.image_size, t2t.splits[:stage])
    return LayerAttention(call.name, "tokens-to-token", call.probs, tokens, tokens, call.image_size)


EMBEDDING_ATTENTION.extend([TokenAttention, TokenPerformer])
