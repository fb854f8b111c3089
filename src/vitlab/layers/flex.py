"""FlexAttention for SASA's neighbourhood attention: the sparse pattern attended without gathering windows.

The gathered path (`layers.grouping.neighbourhoods`) copies the k x k window of every pixel into a
(pixels, k * k, C) tensor, for the keys and again for the values, and attends one query to each.
`torch.nn.attention.flex_attention`, compiled, instead attends every pixel to the whole map under a
block-sparse mask: only the key blocks that a block of queries' windows reach are computed, and
nothing is copied. SASA's relative term q . r_{a-i,b-j} (eq. 3) enters as a score modification that
reads q . r at the offset between query and key.

When it runs (`use_flex`), from measurements side by side on 2 loaded AVX2 cores (benchmarks/
flex_attention.py, docs/benchmarks.md): a SASA layer with heads of 32 or 64 channels ran 1.6x to 3.2x
faster by flex at maps of 7 x 7 to 56 x 56, while with heads of 8 or 16 channels flex was slower (0.3x
to 1.0x): the score modification's lookup costs per score what a narrow head's dot product does. So
only heads of `FLEX_MIN_HEAD_DIM` channels or more take it, at maps of at least `FLEX_MIN_TOKENS`
tokens, in inference only (training keeps the gathered path, whose gradients are plain autograd), in
float32 / bfloat16 / float16 (float64, the parity path, is unchanged), not while attention is recorded,
counted (`explicit_attention`) or exported. float32 outputs differ from the gathered path's by rounding
only (tested: below 1e-5 relative).

Each new input shape compiles the kernel once (seconds to a minute on a CPU: 49 s for the first
forward of SASA-ResNet-26 here); past `MAX_COMPILED_SHAPES` shapes the gathered path is used, so that
dynamo's recompilation limit is never reached (beyond it flex would run unfused, materialising every
score). The path is therefore opt-in: `with flex_attention_enabled():` turns it on. Off by default,
a plain `model(x)` never starts a compilation behind the user's back (which needs a C++ compiler on
a CPU and costs a minute per shape): worth it for long inference runs at few shapes, not for one
image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from vitlab.layers import attention

FLEX_MIN_HEAD_DIM = 32
FLEX_MIN_TOKENS = 7 * 7
FLEX_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_COMPILED_SHAPES = 6

_enabled = False
_compiled_shapes: set[tuple] = set()


@contextmanager
def flex_attention_enabled(enabled: bool = True) -> Iterator[None]:
    """Inside the block, neighbourhood attention takes the FlexAttention path where it is measured to win (or not)."""
    global _enabled
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def use_flex(x: Tensor, heads: int, head_dim: int, recording: bool, weight: Tensor) -> bool:
    """Whether a neighbourhood attention of `heads` heads of `head_dim` channels over the map `x` takes the flex path.

    `recording`: attention is being captured; `weight`: one of the layer's weights (a gradient for it,
    or for `x`, keeps the gathered path).
    """
    size = (x.shape[-2], x.shape[-1])
    small = head_dim < FLEX_MIN_HEAD_DIM or size[0] * size[1] < FLEX_MIN_TOKENS
    if not _enabled or recording or attention._explicit or small:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    if x.dtype not in FLEX_DTYPES or x.device.type not in ("cpu", "cuda"):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        return False
    if not torch.compiler.is_compiling():
        key = _shape_key(x.shape[0], heads, size, head_dim, x)
        if key not in _compiled_shapes and len(_compiled_shapes) >= MAX_COMPILED_SHAPES:
            return False
    return flex_available()


def _shape_key(batch: int, heads: int, size: tuple[int, int], head_dim: int, like: Tensor) -> tuple:
    """What a compiled kernel is specialised to (the map's width is a constant of its mask and score)."""
    return batch, heads, size, head_dim, like.dtype, like.device


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _neighbourhood_mask_mod(width: int, radius: int) -> Callable[..., Tensor]:
    def inside(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        rows = (kv_idx // width - q_idx // width).abs() <= radius
        return rows & ((kv_idx % width - q_idx % width).abs() <= radius)

    return inside


@functools.lru_cache(maxsize=32)
def neighbourhood_block_mask(size: tuple[int, int], kernel_size: int, device: torch.device):  # noqa: ANN201
    """The block-sparse mask of k x k neighbourhoods over a raster-ordered map of `size`, built once per size."""
    from torch.nn.attention.flex_attention import create_block_mask

    tokens = size[0] * size[1]
    inside = _neighbourhood_mask_mod(size[1], kernel_size // 2)
    with torch.inference_mode(False), torch.no_grad():
        return create_block_mask(inside, None, None, tokens, tokens, device=str(device))


def neighbourhood_attention(
    q: Tensor, k: Tensor, v: Tensor, relative: Tensor, size: tuple[int, int], kernel_size: int, scale: float
) -> Tensor:
    """softmax_{j in N_k(i)}(scale * q_i . (k_j + r_{j-i})) v_j over raster-ordered maps, by FlexAttention.

    q, k, v: (B, heads, H * W, d); `relative`: (heads, k * k, d), r for each window offset, row offset
    major (as `layers.position.row_column_embeddings` gives). Returns (B, heads, H * W, d).
    """
    from torch.nn.attention.flex_attention import flex_attention

    width, radius = size[1], kernel_size // 2
    q_dot_r = torch.einsum("bhqd,hod->bhqo", q, relative) * scale  # (B, heads, HW, k * k)
    last = kernel_size * kernel_size - 1

    def add_relative(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        offset = (kv_idx // width - q_idx // width + radius) * kernel_size + (kv_idx % width - q_idx % width + radius)
        return score + q_dot_r[b, h, q_idx, offset.clamp(0, last)]

    block_mask = neighbourhood_block_mask(size, kernel_size, q.device)
    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, score_mod=add_relative, block_mask=block_mask, scale=scale)
    _compiled_shapes.add(_shape_key(q.shape[0], q.shape[1], size, q.shape[-1], q))
    return _compiled_flex()(q, k, v, score_mod=add_relative, block_mask=block_mask, scale=scale)
