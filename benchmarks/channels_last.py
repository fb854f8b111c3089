"""channels-last against contiguous NCHW, side by side on the same weights (issue 19, item 2).

For each model: one copy as built (contiguous parameters, contiguous NCHW input) and one copy
converted with `model.to(memory_format=torch.channels_last)` fed a channels-last input, same
weights. Inference (eval, inference_mode) and a training step (forward, the mean square of the
output as the loss, backward, SGD step) are timed in alternating rounds, the order swapped every
round (`vitlab.bench.run_rounds`); printed: the median throughput of each side, the ratio of the
medians and the range of the per-round ratios, then the float32 max relative error of the
channels-last output against the plain one (eval mode, one forward).

vitlab keeps its token maps as (B, H, W, C) and hands convolutions a permuted NCHW *view* of them,
which already has channels-last strides; so inside the blocks the convolutions run channels-last
either way, and what the setting changes is the input image and the convolutions that read it.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/channels_last.py --threads 1 --models pvt_v2_b0
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics

import torch
from torch import nn

from vitlab.bench import run_rounds
from vitlab.registry import create_model

# name -> (batch, image side): the convolutional stems and pyramids the issue names.
MODELS = {
    "hornet_tiny_7x7": (4, 224),
    "pvt_tiny": (4, 224),
    "pvt_v2_b0": (4, 224),
    "ceit_tiny_patch16_224": (4, 224),
    "vt_resnet18": (4, 224),
    "sasa_resnet26": (1, 224),
    "axial26s": (1, 224),
    "mit_b0": (4, 224),
    "segformer_b0": (2, 256),
    "setr_pup_vit_tiny_512": (1, 256),
    "setr_mla_vit_tiny_512": (1, 256),
}


def first_tensor(out: object) -> torch.Tensor:
    """The main output: logits, a segmentation map, or the first of a tuple / list / dict of them."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, tuple | list):
        out = out[0]
    return out


def steps(model: nn.Module, x: torch.Tensor):
    """(inference step, training step) of `model` on `x`."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)

    def train() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        first_tensor(model(x)).float().square().mean().backward()
        optimizer.step()

    return infer, train


def max_relative_error(plain: nn.Module, last: nn.Module, x: torch.Tensor) -> float:
    plain.eval(), last.eval()
    with torch.inference_mode():
        a = first_tensor(plain(x)).double()
        b = first_tensor(last(x.contiguous(memory_format=torch.channels_last))).double()
    return ((a - b).abs().max() / a.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=("infer", "train"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {args.threads} threads, {platform.machine()}, fp32 eager, "
        f"{args.rounds} alternating rounds of {args.warmup} untimed + {args.repeats} timed calls per side"
    )
    print("| model | batch, size | mode | channels-last img/s | contiguous img/s | ratio (per-round range) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        batch, side = MODELS.get(name, (4, 224))
        torch.manual_seed(0)
        plain = create_model(name)
        last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
        x_last = x.contiguous(memory_format=torch.channels_last)
        error = max_relative_error(plain, last, x)
        for mode in args.modes:
            index = 0 if mode == "infer" else 1
            pair = [steps(last, x_last)[index], steps(plain, x)[index]]
            for step in pair:
                step()
            calls = run_rounds(pair, args.rounds, args.warmup, args.repeats)
            per_side = [[batch / statistics.median(c) for c in side_calls] for side_calls in calls]
            ratios = [a / b for a, b in zip(*per_side, strict=True)]
            ours, theirs = (statistics.median(t) for t in per_side)
            print(
                f"| {name} | {batch}, {side} | {mode} | {ours:.2f} | {theirs:.2f} | "
                f"**{ours / theirs:.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) |",
                flush=True,
            )
        print(f"#   {name}: float32 max relative error, channels-last against contiguous: {error:.1e}", flush=True)


if __name__ == "__main__":
    main()
