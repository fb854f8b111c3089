"""ConViT-Ti, vitlab against timm on this CPU: inference (fp32, bf16 autocast) and a training step.

Both run the same weights (timm's state dict loaded into vitlab). timm computes the positional
attention of every GPSA layer per image and renormalises the mixed rows; vitlab computes it once
per layer call for the whole batch, from offsets cached per grid size. The two are measured in
alternation, `--rounds` times, and the median of the rounds is reported. Run with `make bench`,
which installs timm in a separate environment.
"""

from __future__ import annotations

import argparse
import platform

import torch
from common import alternate, inference_throughput, load_timm, print_table, train_step_throughput

import vitlab
from vitlab.checkpoint import load_state_dict

NAME = "convit_tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating vitlab/timm measurements (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timm = load_timm()
    print(
        f"# {NAME}: torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"inference batch {args.batch_size}, training batch {args.train_batch_size}, "
        + (f"timm {timm.__version__}" if timm else "timm not installed")
    )
    torch.manual_seed(0)
    ours = vitlab.create_model(NAME)
    reference = None
    if timm is not None:
        reference = timm.create_model(NAME, pretrained=False)
        load_state_dict(ours, reference.state_dict())
    batch = torch.randn(args.batch_size, 3, 224, 224)
    train_batch = torch.randn(args.train_batch_size, 3, 224, 224)
    timing = dict(warmup=args.warmup, repeats=args.repeats)
    cases = [
        ("inference fp32", lambda m: inference_throughput(m, batch, False, **timing)),
        ("inference bf16 autocast", lambda m: inference_throughput(m, batch, True, **timing)),
        ("train step fp32 (fwd+bwd+SGD)", lambda m: train_step_throughput(m, train_batch, **timing)),
    ]
    rows = []
    for label, measure in cases:
        a, b = alternate(measure, ours, reference, args.rounds)
        rows.append((label, f"{a:.1f}", f"{b:.1f}" if b else "-", f"{a / b:.2f}x" if b else "-"))
    print_table(("ConViT-Ti", "vitlab img/s", "timm img/s", "vitlab / timm"), rows)


if __name__ == "__main__":
    main()
