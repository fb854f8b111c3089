"""FlexAttention against vitlab's gathered neighbourhoods (SASA's local attention), side by side.

    PYTHONPATH=src python benchmarks/flex_attention.py --size 56 --channels 64 128 --threads 1

SASA's local attention (`layers.grouping.neighbourhoods`) gathers the k x k window of every pixel
into a (pixels, k * k, C) copy of the keys and of the values and attends one query to each.
`torch.nn.attention.flex_attention`, compiled, can instead attend every pixel to the whole map under
a block-sparse mask, copying nothing; SASA's relative term q . r_{a-i,b-j} (eq. 3) then enters as a
score modification that reads q . r for the offset between query and key. This script times, in
alternating rounds (order swapped each round), a SASA layer's forward both ways, and the bare
neighbourhood attention (no relative term) both ways, and prints the ratios with their spread.
The findings are in docs/benchmarks.md; `vitlab.layers.flex` says where the library takes the path.
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
from vitlab.layers.flex import _compiled_flex, flex_attention_enabled, neighbourhood_block_mask
from vitlab.layers.grouping import batch_mask
from vitlab.layers.grouping.neighbourhoods import Neighbourhoods
from vitlab.models.sasa import LocalSelfAttention


def gathered_forward(layer: LocalSelfAttention, x: Tensor) -> Tensor:
    """`layer`'s output by the gathered windows, whatever `layers.flex` would choose."""
    with flex_attention_enabled(False):
        return layer(x)


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
                    functools.partial(gathered_forward, layer, x),
                    functools.partial(layer._flex_forward, x),
                    args.rounds,
                )
                gathered, flex = bare_pair(channels, size, args.kernel, args.heads)
                side_by_side(f"no relative term, {case}", gathered, flex, args.rounds)


if __name__ == "__main__":
    main()
