"""Where the time goes, vitlab next to timm: the operators with the most self CPU time in a few calls.

Both libraries run the same weights (timm's state dict loaded into vitlab). A ratio near 1.0 in
`vitlab bench --against timm` with the same operators on top of both columns means the two run the
same kernels, and no rewrite of the Python around them can move the ratio much.

    python benchmarks/profile_vs_timm.py --model swin_tiny_patch4_window7_224 --mode train --calls 2
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from vitlab.bench import BenchConfig, build_sides, inference_step, training_step


def self_times(step, calls: int) -> dict[str, tuple[float, int]]:
    """Self CPU seconds and call counts per operator over `calls` calls of `step` (after one untimed call)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        totals[event.key][0] += event.self_cpu_time_total / 1e6
        totals[event.key][1] += event.count
    return {k: (v[0], v[1]) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--ops",
        nargs="*",
        default=["aten::copy_", "aten::contiguous", "aten::clone", "aten::permute", "aten::reshape"],
        help="operators whose counts are printed whether or not they are among the top (layout copies)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sides = build_sides(BenchConfig(args.model, against="timm"), torch.device("cpu"))
    batch = torch.randn(args.batch_size, 3, 224, 224)
    make = inference_step if args.mode == "infer" else training_step
    profiles = {label.split()[0]: self_times(make(model, batch), args.calls) for label, model in sides}
    ours, theirs = profiles["vitlab"], profiles["timm"]
    total_ours, total_theirs = sum(t for t, _ in ours.values()), sum(t for t, _ in theirs.values())
    print(f"# {args.model} {args.mode}, batch {args.batch_size}, {args.calls} calls, {args.threads} threads")
    print("| operator | vitlab s (calls) | timm s (calls) |\n|---|---|---|")
    print(f"| all | {total_ours:.2f} | {total_theirs:.2f} |")
    keys = sorted(set(ours) | set(theirs), key=lambda k: -max(ours.get(k, (0, 0))[0], theirs.get(k, (0, 0))[0]))
    shown = keys[: args.top] + [k for k in args.ops if k not in keys[: args.top]]
    for key in shown:
        a, b = ours.get(key, (0.0, 0)), theirs.get(key, (0.0, 0))
        print(f"| `{key}` | {a[0]:.2f} ({a[1]}) | {b[0]:.2f} ({b[1]}) |")


if __name__ == "__main__":
    main()
