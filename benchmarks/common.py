"""Helpers shared by the benchmark scripts: the timing itself lives in `vitlab.bench` (what `vitlab bench`
runs), these are the scripts' tables and options around it."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from vitlab import bench
from vitlab.bench import inference_throughput, median_seconds, train_step_throughput

__all__ = ["inference_throughput", "median_seconds", "train_step_throughput"]

# The models timm shares with vitlab (measured against timm by `make bench`).
SHARED_WITH_TIMM = [
    "vit_small_patch16_224",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "pvt_v2_b0",
    "pvt_v2_b2",
    "convit_tiny",
]
# One variant of every classification family (DeiT shares ViT's code, MiT is PVT v2's backbone).
ONE_PER_FAMILY = [
    "vit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "pvt_v2_b0",
    "pvt_tiny",
    "cswin_tiny_224",
    "pale_tiny_224",
    "axial26s",
    "sasa_resnet26",
    "dat_tiny",
    "ps_vit_b_10",
    "t2t_vit_14",
    "convit_tiny",
    "ceit_tiny_patch16_224",
    "hornet_tiny_7x7",
    "vt_resnet18",
]


def alternate(measure: Callable[[torch.nn.Module], float], ours, reference, rounds: int) -> tuple[float, float | None]:
    """Median of `measure(ours)` and `measure(reference)` over `rounds` rounds, in alternation with the
    order swapped every other round (`vitlab.bench.alternate`). `reference` may be None."""
    subjects = [ours] if reference is None else [ours, reference]
    results = bench.alternate(measure, subjects, rounds)
    return statistics.median(results[0]), statistics.median(results[1]) if reference is not None else None


def print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    """A Markdown table, ready to paste into the README."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def load_timm():
    """timm if installed, else None (the benchmarks then report vitlab alone)."""
    try:
        import timm
    except ImportError:
        return None
    return timm


def add_timing_options(parser, batch_size: int) -> None:
    """The options every vitlab-against-timm comparison takes."""
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--train-batch-size", type=int, default=batch_size)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating vitlab/timm measurements (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())


def start_comparison(args, title: str):
    """Sets the thread count, prints the set-up line and returns timm (None when not installed)."""
    import platform

    torch.set_num_threads(args.threads)
    timm = load_timm()
    print(
        f"# {title}: torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"inference batch {args.batch_size}, training batch {args.train_batch_size}, "
        + (f"timm {timm.__version__}" if timm else "timm not installed")
    )
    return timm


def compare_with_timm(name: str, args, timm) -> list[tuple[str, str, str, str]]:
    """(case, vitlab img/s, timm img/s, ratio) for inference fp32, bf16 autocast and a training step
    of `name`, both libraries on timm's weights, measured in alternation."""
    import vitlab
    from vitlab.checkpoint import load_state_dict

    torch.manual_seed(0)
    ours = vitlab.create_model(name)
    reference = None
    if timm is not None:
        reference = timm.create_model(name, pretrained=False)
        load_state_dict(ours, reference.state_dict(), source=f"timm {name}")
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
    return rows
