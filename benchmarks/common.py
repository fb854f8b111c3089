"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference_throughput(
    model: torch.nn.Module, batch: torch.Tensor, bf16: bool = False, warmup: int = 3, repeats: int = 10
) -> float:
    """Images per second of `model(batch)` in eval mode under inference_mode (and bf16 autocast)."""
    model.eval()
    autocast = torch.autocast(batch.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def run() -> None:
        with torch.inference_mode(), autocast:
            model(batch)

    return batch.shape[0] / median_seconds(run, warmup, repeats)


def train_step_throughput(model: torch.nn.Module, batch: torch.Tensor, warmup: int = 2, repeats: int = 5) -> float:
    """Images per second of forward + backward + SGD step on a cross-entropy loss."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.zeros(batch.shape[0], dtype=torch.long)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(batch)
        logits = logits[0] if isinstance(logits, tuple) else logits
        torch.nn.functional.cross_entropy(logits, target).backward()
        optimizer.step()

    return batch.shape[0] / median_seconds(step, warmup, repeats)


def alternate(measure: Callable[[torch.nn.Module], float], ours, reference, rounds: int) -> tuple[float, float | None]:
    """Median of `measure(ours)` and `measure(reference)` over `rounds` rounds, the two measured in
    alternation and in swapped order every other round, so that changes in the machine's load and
    whatever the first measurement of a round pays affect both sides alike. `reference` may be None."""
    mine, theirs = [], []
    for round_index in range(rounds):
        sides = [(ours, mine), (reference, theirs)]
        for model, results in reversed(sides) if round_index % 2 else sides:
            if model is not None:
                results.append(measure(model))
    return statistics.median(mine), statistics.median(theirs) if theirs else None


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
