"""PVT v2 (b0, b2), vitlab against timm on this CPU: inference (fp32, bf16 autocast) and a training step.

Both run the same weights (timm's state dict loaded into vitlab). timm runs as it ships (fused
`scaled_dot_product_attention` unless TIMM_FUSED_ATTN=0); vitlab's spatial-reduction attention goes
through `attend()`, which also takes the fused kernel (plain products for short key sequences in a CPU
training step, see layers/attention.py). PVT v2 has nothing that depends on the input size to cache:
no position tables, no masks, no index tensors. On a shared machine the two are measured in
alternation, `--rounds` times, and the median of the rounds is reported.

    python benchmarks/pvt.py --rounds 3 --batch-size 16
"""

from __future__ import annotations

import argparse
import platform

import torch
from common import alternate, inference_throughput, load_timm, print_table, train_step_throughput

import vitlab
from vitlab.checkpoint import load_state_dict

NAMES = ("pvt_v2_b0", "pvt_v2_b2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(NAMES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating vitlab/timm measurements (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timm = load_timm()
    print(
        f"# PVT v2: torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"inference batch {args.batch_size}, training batch {args.train_batch_size}, "
        + (f"timm {timm.__version__}" if timm else "timm not installed")
    )
    batch = torch.randn(args.batch_size, 3, 224, 224)
    train_batch = torch.randn(args.train_batch_size, 3, 224, 224)
    timing = dict(warmup=args.warmup, repeats=args.repeats)
    cases = [
        ("inference fp32", lambda m: inference_throughput(m, batch, False, **timing)),
        ("inference bf16 autocast", lambda m: inference_throughput(m, batch, True, **timing)),
        ("train step fp32 (fwd+bwd+SGD)", lambda m: train_step_throughput(m, train_batch, **timing)),
    ]
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        ours = vitlab.create_model(name)
        reference = None
        if timm is not None:
            reference = timm.create_model(name, pretrained=False)
            load_state_dict(ours, reference.state_dict(), source=f"timm {name}")
        for label, measure in cases:
            a, b = alternate(measure, ours, reference, args.rounds)
            rows.append((name, label, f"{a:.1f}", f"{b:.1f}" if b else "-", f"{a / b:.2f}x" if b else "-"))
    print_table(("model", "case", "vitlab img/s", "timm img/s", "vitlab / timm"), rows)


if __name__ == "__main__":
    main()
