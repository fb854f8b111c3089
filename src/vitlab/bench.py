"""Speed and memory of a model, alone or side by side with timm: what `vitlab bench` measures.

On a machine that other work shares, two measurements taken one after the other differ by more
than the libraries do (8% and more here). So the sides are measured in alternating rounds, the
order swapped every round (whatever the first measurement of a round pays, or a burst of load
lasting a round, falls on both sides alike), and what is reported is the median over the rounds,
with their spread, and the ratio of the medians next to the range of the per-round ratios.

Each round runs every side `warmup` untimed calls, then `repeats` timed calls; a round's figure is
the median of its timed calls. Latency percentiles are over every timed call of every round.
Peak memory is measured once per side after the rounds: on CPU, the growth of the resident set
over one call (the kernel's high-water mark, reset first, after freed memory is handed back to
the system), on GPU the maximum allocated by torch over one call.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from vitlab.bench_machine import machine_description, peak_memory
from vitlab.fold import fold_for_inference

T = TypeVar("T")
Clock = Callable[[], float]
MODES = ("infer", "train")
PRECISIONS = ("fp32", "bf16", "auto")


class BenchError(ValueError):
    """A benchmark that cannot run as asked (timm missing, a model timm does not have, ...)."""


def alternate(measure: Callable[[T], float], subjects: Sequence[T], rounds: int) -> list[list[float]]:
    """`measure(subject)` for every subject in each of `rounds` rounds, the order reversed every other round.

    Returns the results per subject, in round order.
    """
    results: list[list[float]] = [[] for _ in subjects]
    order = list(range(len(subjects)))
    for round_index in range(rounds):
        for i in reversed(order) if round_index % 2 else order:
            results[i].append(measure(subjects[i]))
    return results


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, clock: Clock = time.perf_counter) -> list[float]:
    """Seconds of each of `repeats` calls of `fn()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def median_seconds(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs."""
    return statistics.median(time_calls(fn, warmup, repeats))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated between the sorted values (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class SideResult:
    """One side of a benchmark: the timed calls of every round, and its peak memory."""

    label: str
    batch: int
    calls: list[list[float]]  # seconds of each timed call, per round
    size: tuple[int, int] = (224, 224)
    peak_memory: int | None = None  # bytes

    @property
    def round_throughputs(self) -> list[float]:
        return [self.batch / statistics.median(times) for times in self.calls]

    @property
    def throughput(self) -> float:
        return statistics.median(self.round_throughputs)

    def latency_ms(self, q: float) -> float:
        return 1000 * percentile([t for times in self.calls for t in times], q)


def run_rounds(
    steps: Sequence[Callable[[], object]], rounds: int, warmup: int, repeats: int, clock: Clock = time.perf_counter
) -> list[list[list[float]]]:
    """The timed calls of every step (per step, per round), the steps alternating as `alternate` orders them."""
    return alternate(lambda step: time_calls(step, warmup, repeats, clock), steps, rounds)


def ratio_summary(ours: SideResult, theirs: SideResult) -> tuple[float, float, float]:
    """(ratio of the median throughputs, lowest and highest ratio of the same round's throughputs)."""
    per_round = [a / b for a, b in zip(ours.round_throughputs, theirs.round_throughputs, strict=True)]
    return ours.throughput / theirs.throughput, min(per_round), max(per_round)


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """fp32: no autocast; bf16: bfloat16 autocast; auto: bf16 where the hardware runs it natively."""
    if precision == "auto":
        from vitlab.train.precision import native_bf16

        precision = "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_step(model: nn.Module, batch: torch.Tensor, precision: str = "fp32") -> Callable[[], None]:
    """One forward pass in eval mode under inference_mode (and the precision's autocast)."""
    model.eval()

    def step() -> None:
        with torch.inference_mode(), autocast_for(precision, batch.device):
            model(batch)

    return step


def training_step(model: nn.Module, batch: torch.Tensor, precision: str = "fp32") -> Callable[[], None]:
    """Forward, cross-entropy against class 0, backward and an SGD step, in train mode."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.zeros(batch.shape[0], dtype=torch.long, device=batch.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(precision, batch.device):
            logits = model(batch)
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss = nn.functional.cross_entropy(logits.float(), target)
        loss.backward()
        optimizer.step()

    return step


def inference_throughput(
    model: nn.Module, batch: torch.Tensor, bf16: bool = False, warmup: int = 3, repeats: int = 10
) -> float:
    """Images per second of `model(batch)` in eval mode under inference_mode (and bf16 autocast)."""
    return batch.shape[0] / median_seconds(inference_step(model, batch, "bf16" if bf16 else "fp32"), warmup, repeats)


def train_step_throughput(model: nn.Module, batch: torch.Tensor, warmup: int = 2, repeats: int = 5) -> float:
    """Images per second of forward + backward + SGD step on a cross-entropy loss."""
    return batch.shape[0] / median_seconds(training_step(model, batch), warmup, repeats)


def synchronized(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """`step`, waiting for the GPU to finish before it returns (so that the clock sees the work)."""
    if device.type != "cuda":
        return step

    def run() -> None:
        step()
        torch.cuda.synchronize(device)

    return run


@dataclass
class BenchConfig:
    """What `vitlab bench` measures (its options)."""

    model: str
    batch_size: int = 8
    img_size: tuple[int, int] | None = None
    mode: str = "infer"
    precision: str = "fp32"
    compile: bool = False
    fold: bool = False
    channels_last: bool = False
    against: str | None = None
    rounds: int = 7
    warmup: int = 1
    repeats: int = 3
    tiny: bool = False
    device: str = "auto"
    model_args: dict[str, Any] = field(default_factory=dict)


def build_sides(config: BenchConfig, device: torch.device) -> list[tuple[str, nn.Module]]:
    """vitlab's model and, with `against="timm"`, timm's model of the same name carrying the same weights
    (`against="eager"`: the same vitlab model again, run without torch.compile)."""
    from vitlab.checkpoint import load_state_dict
    from vitlab.registry import create_model, get_entry

    kwargs = dict(get_entry(config.model).tiny) if config.tiny else {}
    kwargs.update(config.model_args)
    if config.img_size is not None:
        kwargs["img_size"] = config.img_size
    torch.manual_seed(0)
    ours = create_model(config.model, **kwargs)
    sides = [("vitlab", ours)]
    if config.against == "timm":
        try:
            import timm
        except ImportError as err:
            raise BenchError("--against timm needs timm installed (pip install timm)") from err
        if not timm.is_model(config.model):
            raise BenchError(f"timm has no model named {config.model!r}: compare one both libraries have")
        theirs = timm.create_model(config.model, pretrained=False, **kwargs)
        load_state_dict(ours, theirs.state_dict(), source=f"timm {config.model}")
        sides.append((f"timm {timm.__version__}", theirs))
    elif config.against == "eager":
        if not config.compile:
            raise BenchError("--against eager compares torch.compile with eager execution: add --compile")
        sides = [("vitlab compiled", ours), ("eager", ours)]
    elif config.against == "unfolded":
        if not config.fold:
            raise BenchError("--against unfolded compares a folded model with itself unfolded: add --fold")
        sides = [("vitlab folded", ours), ("unfolded", ours)]
    elif config.against == "contiguous":
        if not config.channels_last:
            raise BenchError("--against contiguous compares channels-last with the plain layout: add --channels-last")
        sides = [("vitlab channels-last", copy.deepcopy(ours)), ("contiguous", ours)]
    elif config.against is not None:
        raise BenchError(f"--against must be 'timm', 'eager', 'unfolded' or 'contiguous', got {config.against!r}")
    if config.fold:  # vitlab's side, folded for inference (vitlab.fold); the others stay as built
        if config.mode != "infer":
            raise BenchError("--fold folds BatchNorm and LayerScale for inference: use it with --mode infer")
        sides[0] = (sides[0][0], fold_for_inference(sides[0][1]))
    if config.channels_last:  # vitlab's side: channels-last parameters (4-d) and, in `benchmark`, input
        sides[0][1].to(memory_format=torch.channels_last)
    return [(label, model.to(device)) for label, model in sides]


def resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def benchmark(config: BenchConfig, clock: Clock = time.perf_counter) -> list[SideResult]:
    """Measure every side of `config` in alternating rounds; the first result is vitlab's."""
    if config.mode not in MODES or config.precision not in PRECISIONS:
        raise BenchError(f"mode must be one of {MODES} and precision one of {PRECISIONS}")
    device = resolve_device(config.device)
    sides = build_sides(config, device)
    from vitlab.registry import get_entry

    size = config.img_size or sides[0][1].img_size or get_entry(config.model).preprocess.input_size[1:]
    batch = torch.randn(config.batch_size, sides[0][1].in_chans, *size, generator=torch.Generator().manual_seed(0))
    batch = batch.to(device)
    make = inference_step if config.mode == "infer" else training_step
    steps = []
    for index, (label, model) in enumerate(sides):
        side_batch = (
            batch.contiguous(memory_format=torch.channels_last) if config.channels_last and not index else batch
        )
        runnable = torch.compile(model) if config.compile and label != "eager" else model
        step = synchronized(make(runnable, side_batch, config.precision), device)
        step()  # the first call compiles (and fills caches) before any round
        steps.append(step)
    calls = run_rounds(steps, config.rounds, config.warmup, config.repeats, clock)
    labels = [label for label, _ in sides]
    results = [SideResult(label, config.batch_size, c, tuple(size)) for label, c in zip(labels, calls, strict=True)]
    for result, step in zip(results, steps, strict=True):
        result.peak_memory = peak_memory(step, device)
    return results


def report(config: BenchConfig, results: Sequence[SideResult]) -> str:
    """The printed table: one line per side, then (against timm) the ratio, last."""
    device = resolve_device(config.device)
    size = "x".join(str(s) for s in results[0].size)
    width = max(16, *(len(r.label) for r in results))
    paths = ["torch.compile" if config.compile else "eager"]
    paths += [name for name, on in (("folded", config.fold), ("channels-last", config.channels_last)) if on]
    lines = [
        f"# {config.model}{' (tiny)' if config.tiny else ''}: {config.mode}, {config.precision}, "
        f"{', '.join(paths)}, "
        f"batch {config.batch_size}, {size}, "
        f"{config.rounds} rounds x {config.repeats} calls",
        f"# {machine_description(device)}",
        f"{'library':<{width}} {'img/s':>8} {'spread (rounds)':>17} "
        f"{'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'peak MB':>9}",
    ]
    for r in results:
        spread = f"{min(r.round_throughputs):.1f}-{max(r.round_throughputs):.1f}"
        memory = "-" if r.peak_memory is None else f"{r.peak_memory / 2**20:.0f}"
        lines.append(
            f"{r.label:<{width}} {r.throughput:>8.2f} {spread:>17} {r.latency_ms(50):>9.1f} {r.latency_ms(90):>9.1f} "
            f"{r.latency_ms(99):>9.1f} {memory:>9}"
        )
    if len(results) == 2:
        ratio, low, high = ratio_summary(*results)
        names = f"{results[0].label} / {results[1].label.split()[0]}"
        lines.append(f"{names}: {ratio:.2f}x (rounds {low:.2f}x-{high:.2f}x)")
    return "\n".join(lines)


def register_bench_command(commands: Any) -> None:
    """Add `vitlab bench` to the `vitlab` subcommands."""
    import argparse

    bench = commands.add_parser(
        "bench",
        help="throughput, latency and peak memory of a model, optionally side by side with timm",
        description=__doc__.split("\n\n")[0],
    )
    bench.add_argument("--model", required=True)
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"))
    bench.add_argument("--mode", choices=MODES, default="infer")
    bench.add_argument("--precision", choices=PRECISIONS, default="fp32", help="auto: bf16 where native")
    bench.add_argument("--compile", action="store_true", help="torch.compile (inductor) every side first")
    bench.add_argument("--fold", action="store_true", help="fold BatchNorm and LayerScale (vitlab.fold_for_inference)")
    bench.add_argument(
        "--channels-last",
        action="store_true",
        help="vitlab's side in channels-last memory format (parameters and input); see docs/benchmarks.md",
    )
    bench.add_argument(
        "--against",
        choices=("timm", "eager", "unfolded", "contiguous"),
        help="timm: the same model in timm, same weights; eager (with --compile) / unfolded (with --fold) / "
        "contiguous (with --channels-last): itself",
    )
    bench.add_argument("--rounds", type=int, default=7, help="alternating rounds (median and spread over them)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed calls per side and round")
    bench.add_argument("--repeats", type=int, default=3, help="timed calls per side and round")
    bench.add_argument("--tiny", action="store_true", help="the model's tiny test configuration")
    bench.add_argument("--device", default="auto")

    def run(args: argparse.Namespace) -> int:
        from vitlab.cli import UsageError

        config = BenchConfig(**{k: v for k, v in vars(args).items() if k in BenchConfig.__dataclass_fields__})
        if config.img_size is not None:
            config.img_size = tuple(config.img_size)
        try:
            print(report(config, benchmark(config)))
        except BenchError as err:
            raise UsageError(str(err)) from err
        return 0

    bench.set_defaults(func=run)
