"""HorNet blocks: depthwise convolutions on channels-last views against contiguous NCHW copies.

vitlab's HorNet keeps its maps channels-last (B, H, W, C): the LayerNorms, the 1x1 projections
and the MLP act on the last dimension, and the spatial filters (7x7 depthwise convolution; the
3x3 one of the global-local filter) see an NCHW *view* of that memory, i.e. a channels-last
convolution. The alternative is to copy to a contiguous NCHW tensor around each filter, as the
official code's NCHW maps are. This script times one HorNet-T block of each kind (forward, and
forward + backward) both ways, alternating `--rounds` times, medians reported.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/hornet_layout.py
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics

import torch
from common import median_seconds

import vitlab.models.hornet as hornet

# (label, dim, order, map side, global-local filter): HorNet-T's stages 1 and 3, 7x7 and GF.
BLOCKS = [
    ("stage 1, 7x7, order 2", 64, 2, 56, False),
    ("stage 3, 7x7, order 4", 256, 4, 14, False),
    ("stage 3, GF, order 4", 256, 4, 14, True),
]


@contextlib.contextmanager
def contiguous_nchw():
    """Every filter reads a contiguous NCHW copy and its output is copied back to channels-last."""
    views = hornet.nchw, hornet.nhwc
    hornet.nchw = lambda x: x.permute(0, 3, 1, 2).contiguous()
    hornet.nhwc = lambda x: x.permute(0, 2, 3, 1).contiguous()
    try:
        yield
    finally:
        hornet.nchw, hornet.nhwc = views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} threads, {platform.machine()}, batch {args.batch_size}")
    print("| block | pass | channels-last view (ms) | contiguous NCHW (ms) |")
    print("|---|---|---|---|")
    for label, dim, order, side, gf in BLOCKS:
        gnconv = hornet.GnConv(dim, order, filter_size=(side, side // 2 + 1) if gf else None)
        block = hornet.HorNetBlock(dim, gnconv)
        x = torch.randn(args.batch_size, side, side, dim)
        xg = x.clone().requires_grad_()

        def forward(block=block, x=x):
            with torch.no_grad():
                block(x)

        def train(block=block, x=xg):
            block(x).sum().backward()

        for pass_name, fn in (("forward", forward), ("fwd+bwd", train)):
            times: dict[str, list[float]] = {"view": [], "copy": []}
            for _ in range(args.rounds):
                times["view"].append(median_seconds(fn, warmup=1, repeats=args.repeats))
                with contiguous_nchw():
                    times["copy"].append(median_seconds(fn, warmup=1, repeats=args.repeats))
            view, copy = (statistics.median(times[k]) * 1e3 for k in ("view", "copy"))
            print(f"| {label} | {pass_name} | {view:.1f} | {copy:.1f} |")


if __name__ == "__main__":
    main()
