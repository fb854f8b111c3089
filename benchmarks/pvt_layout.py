"""PVT v2's depthwise convolution on a channels-last view against a contiguous NCHW copy.

vitlab's `ConvFeedForward` keeps the tokens as a (B, H, W, C) map and hands the depthwise 3x3
convolution a permuted NCHW view of it (channels-last strides), whose output permutes back to a
contiguous (B, H, W, C) map. The alternative copies to contiguous NCHW before the convolution and
back after it. This script times the whole model both ways, same weights, in alternating rounds
(order swapped every round): inference and a training step, ratio view / copy with the per-round
range.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/pvt_layout.py --model pvt_v2_b0 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import types

import torch
from torch import Tensor

from vitlab.bench import inference_step, run_rounds, training_step
from vitlab.models.pvt import ConvFeedForward
from vitlab.registry import create_model


def forward_with_copies(self: ConvFeedForward, x: Tensor) -> Tensor:
    """`ConvFeedForward.forward`, with contiguous NCHW copies around the depthwise convolution."""
    x = self.relu(self.fc1(x))
    x = self.dwconv(x.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).contiguous()
    return self.drop(self.fc2(self.drop(self.act(x))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pvt_v2_b0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    view = create_model(args.model)
    copied = copy.deepcopy(view)
    for module in copied.modules():
        if isinstance(module, ConvFeedForward):
            module.forward = types.MethodType(forward_with_copies, module)
    x = torch.randn(args.batch_size, 3, 224, 224)
    view.eval(), copied.eval()
    with torch.no_grad():
        a, b = view(x), copied(x)
    error = ((a - b).abs().max() / a.abs().max()).item()
    print(
        f"# {args.model}, batch {args.batch_size}, {args.threads} threads, {args.rounds} rounds; "
        f"float32 max relative error view vs copy {error:.1e}"
    )
    for mode, make in (("infer", inference_step), ("train", training_step)):
        steps = [make(view, x), make(copied, x)]
        for step in steps:
            step()
        calls = run_rounds(steps, args.rounds, warmup=1, repeats=2)
        rates = [[args.batch_size / statistics.median(c) for c in side] for side in calls]
        ratios = [p / q for p, q in zip(*rates, strict=True)]
        medians = [statistics.median(r) for r in rates]
        print(
            f"{mode}: view {medians[0]:.2f} img/s, copy {medians[1]:.2f} img/s, "
            f"{medians[0] / medians[1]:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
