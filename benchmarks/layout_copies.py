"""Layout copies in one step, vitlab next to timm: every `aten::copy_`, grouped by shape and by caller.

A copy between blocks (a `permute(...).contiguous()`, a `reshape` of a non-contiguous tensor, a
LayerNorm fed a permuted view) shows up as an `aten::copy_` whose caller chain names the operator
that needed it. Both libraries run the same weights (`vitlab.bench.build_sides`); one untimed step,
then one profiled step per side. Printed per side: the number of copies and their self CPU time,
then the groups (shape, callers) with the most time; `--diff` prints instead the groups whose
counts differ between the two libraries.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/layout_copies.py --model pvt_v2_b2 --mode train
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from vitlab.bench import BenchConfig, build_sides, inference_step, training_step


def copies(step, depth: int = 3) -> tuple[Counter, Counter]:
    """(count, self CPU microseconds) of the copies of one call of `step`, keyed by (shape, callers)."""
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    counts: Counter = Counter()
    times: Counter = Counter()
    for event in prof.events():
        if event.name != "aten::copy_":
            continue
        chain, parent = [], event.cpu_parent
        while parent is not None and len(chain) < depth:
            chain.append(parent.name)
            parent = parent.cpu_parent
        key = (str(event.input_shapes[0] if event.input_shapes else []), " < ".join(chain))
        counts[key] += 1
        times[key] += event.self_cpu_time_total
    return counts, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--diff", action="store_true", help="the groups whose counts differ between the libraries")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sides = build_sides(BenchConfig(args.model, against="timm"), torch.device("cpu"))
    batch = torch.randn(args.batch_size, 3, 224, 224)
    make = inference_step if args.mode == "infer" else training_step
    results = {label.split()[0]: copies(make(model, batch)) for label, model in sides}
    print(f"# {args.model} {args.mode}, batch {args.batch_size}, {args.threads} threads, one step")
    for label, (counts, times) in results.items():
        print(f"{label}: {sum(counts.values())} copies, {sum(times.values()) / 1e3:.1f} ms")
    if args.diff:
        (ours, _), (theirs, _) = results["vitlab"], results["timm"]
        for key in sorted(set(ours) | set(theirs)):
            if ours[key] != theirs[key]:
                print(f"  vitlab {ours[key]:3d}  timm {theirs[key]:3d}  {key[0]}  {key[1]}")
        return
    for label, (counts, times) in results.items():
        print(f"## {label}")
        for key in sorted(counts, key=lambda k: -times[k])[: args.top]:
            print(f"  {counts[key]:4d} {times[key] / 1e3:7.1f} ms  {key[0]}  {key[1]}")


if __name__ == "__main__":
    main()
