"""FlexAttention against vitlab's gathered neighbourhoods (SASA's local attention), side by side.

    PYTHONPATH=src python benchmarks/flex_attention.py --size 56 --channels 64 128 --threads 1

SASA's local attention (`layers.grouping.neighbourhoods`) gathers the k x k window of every pixel
into a (pixels, k * k, C) copy of the keys and of the values and attends one query to each.
`torch.nn.attention.flex_attention`, compiled, can instead attend every pixel to the whole map under
a block-sparse mask, copying nothing; SASA's relative term q . r_{a-i,b-j} (eq. 3) then enters as a
score modification that reads q . r for the offset between query and key. This script times, in
alternating rounds (order swapped each round), a SASA layer's forward both ways, and the bare
neighbourhood attention (no relative term) both ways, and prints the ratios with their spread.
The findings, and why the path was not kept in the library, are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from vitlab.layers.attention import attend
from vitlab.layers.grouping import batch_mask
from vitlab.layers.grouping.neighbourhoods import Neighbourhoods
from vitlab.layers.position import row_column_embeddings
from vitlab.models.sasa import LocalSelfAttention


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
    run = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    return run(q, k, v, score_mod=add_relative, block_mask=block_mask, scale=scale)


def sasa_flex_forward(layer: LocalSelfAttention, x: Tensor) -> Tensor:
    """`layer`'s output (before its stride pool) computed by `neighbourhood_attention`."""
    B, C, H, W = x.shape
    heads, d = layer.num_heads, layer.head_dim

    def split(t: Tensor) -> Tensor:  # (B, heads * d, H, W) -> (B, heads, H * W, d)
        return t.reshape(B, heads, d, H * W).transpose(-1, -2)

    relative = row_column_embeddings(layer.emb_row, layer.emb_col, heads)
    q, k, v = split(layer.query(x)), split(layer.key(x)), split(layer.value(x))
    out = neighbourhood_attention(q, k, v, relative, (H, W), layer.kernel_size, scale=1.0)
    return out.transpose(-1, -2).reshape(B, heads * d, H, W)


def bare_pair(channels: int, size: int, kernel: int, heads: int) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    """Neighbourhood attention without the relative term: gathered windows, and flex under a block mask."""
    d, tokens = channels // heads, size * size
    q, k, v = (torch.randn(1, channels, size, size) for _ in range(3))
    grouping = Neighbourhoods(kernel)
    plan = grouping.plan((size, size), "cpu")
    block_mask = neighbourhood_block_mask((size, size), kernel, torch.device("cpu"))

    def gathered() -> Tensor:
        qs = q.permute(0, 2, 3, 1).reshape(tokens, heads, 1, d)
        ks = grouping.group(k, plan).view(-1, kernel * kernel, heads, d).transpose(1, 2)
        vs = grouping.group(v, plan).view(-1, kernel * kernel, heads, d).transpose(1, 2)
        return attend(qs, ks, vs, bias=batch_mask(plan.mask, 1), scale=1.0).reshape(1, tokens, channels)

    def flex() -> Tensor:
        split = [t.reshape(1, heads, d, tokens).transpose(-1, -2) for t in (q, k, v)]
        out = _compiled_flex()(*split, block_mask=block_mask, scale=1.0)
        return out.transpose(1, 2).reshape(1, tokens, channels)

    return gathered, flex


def side_by_side(name: str, plain: Callable[[], Tensor], flex: Callable[[], Tensor], rounds: int) -> None:
    start = time.perf_counter()
    reference, candidate = plain(), flex()
    first = time.perf_counter() - start
    error = ((candidate - reference).abs().max() / reference.abs().max()).item()
    ratios, times = [], {"plain": [], "flex": []}
    for r in range(rounds):
        order = [("plain", plain), ("flex", flex)][:: -1 if r % 2 else 1]
        spent = {}
        for side, run in order:
            calls = []
            for _ in range(3):
                t = time.perf_counter()
                run()
                calls.append(time.perf_counter() - t)
            spent[side] = statistics.median(calls)
            times[side].append(spent[side])
        ratios.append(spent["plain"] / spent["flex"])
    print(
        f"| {name} | {1000 * statistics.median(times['plain']):.1f} | {1000 * statistics.median(times['flex']):.1f} "
        f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {error:.1e} | {first:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[56])
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| case | gathered ms | flex ms | gathered / flex (rounds) | max rel. error | first flex call s |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for size in args.size:
            for channels in args.channels:
                layer = LocalSelfAttention(channels, channels, args.kernel, args.heads).eval()
                x = torch.randn(1, channels, size, size)
                case = f"{size}x{size}, C={channels}, {args.heads} heads"
                side_by_side(
                    f"SASA layer, {case}",
                    functools.partial(layer, x),
                    functools.partial(sasa_flex_forward, layer, x),
                    args.rounds,
                )
                gathered, flex = bare_pair(channels, size, args.kernel, args.heads)
                side_by_side(f"no relative term, {case}", gathered, flex, args.rounds)


if __name__ == "__main__":
    main()
