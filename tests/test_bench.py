"""`vitlab bench`: the alternation and medians on a fake clock, percentiles, peak memory, the command."""

import importlib.util
import sys

import numpy as np
import pytest
import torch

from vitlab.bench import SideResult, alternate, peak_memory, percentile, ratio_summary, run_rounds
from vitlab.cli import main


class FakeClock:
    """A clock that only moves when a step says so: each step adds its own cost, and the first step
    of a round pays a penalty (a cold cache, a burst of load), which alternation must share out."""

    def __init__(self):
        self.now = 0.0
        self.order: list[str] = []

    def __call__(self) -> float:
        return self.now

    def step(self, name: str, cost: float):
        def run() -> None:
            self.order.append(name)
            self.now += cost

        return run


def test_alternate_swaps_the_order_every_round():
    seen = []
    results = alternate(lambda s: seen.append(s) or len(seen), ["a", "b", "c"], rounds=3)
    assert seen == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert results == [[1, 6, 7], [2, 5, 8], [3, 4, 9]]  # per subject, in round order


def test_rounds_time_each_call_on_the_given_clock_and_warmups_are_not_timed():
    clock = FakeClock()
    a, b = clock.step("a", 2.0), clock.step("b", 1.0)
    calls = run_rounds([a, b], rounds=4, warmup=1, repeats=2, clock=clock)
    # each round: one untimed warm-up call, then two timed calls, per side; b first in odd rounds
    assert clock.order == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    assert calls == [[[2.0, 2.0]] * 4, [[1.0, 1.0]] * 4]


def test_the_first_side_of_a_round_pays_a_penalty_and_alternation_shares_it():
    clock = FakeClock()
    state = {"calls": 0}

    def step(name: str, cost: float):
        def run() -> None:
            # the first timed call of each round costs 3 s more, whoever runs it
            state["calls"] += 1
            clock.now += cost + (3.0 if state["calls"] % 4 == 1 else 0.0)

        return run

    calls = run_rounds([step("a", 1.0), step("b", 1.0)], rounds=4, warmup=0, repeats=2, clock=clock)
    ours, theirs = (SideResult(label, 4, c) for label, c in zip("ab", calls, strict=True))
    # per round the penalised side's median is (4 + 1) / 2 = 2.5 s, the other's 1 s
    assert ours.round_throughputs == [4 / 2.5, 4.0, 4 / 2.5, 4.0]
    assert theirs.round_throughputs == [4.0, 4 / 2.5, 4.0, 4 / 2.5]
    ratio, low, high = ratio_summary(ours, theirs)
    assert ratio == pytest.approx(1.0) and low == pytest.approx(0.4) and high == pytest.approx(2.5)


def test_median_spread_and_latency_percentiles_of_a_side():
    side = SideResult("vitlab", 8, [[0.5, 0.4, 0.6], [1.0, 0.8, 0.9], [0.2, 0.3, 0.25]])
    assert side.round_throughputs == pytest.approx([16.0, 8 / 0.9, 32.0])
    assert side.throughput == pytest.approx(16.0)  # the median round, not the mean of the calls
    every_call = [t for r in side.calls for t in r]
    for q in (50, 90, 99):
        assert side.latency_ms(q) == pytest.approx(1000 * np.percentile(every_call, q))


def test_percentile_interpolates_like_numpy():
    values = [3.0, 1.0, 7.0, 2.5, 10.0, 4.0]
    for q in (0, 10, 50, 75, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resident set is read from /proc")
def test_peak_memory_sees_a_temporary_allocation_on_cpu():
    size = 64 * 2**20

    def allocate() -> None:
        x = torch.ones(size // 4)  # 64 MB, touched
        del x

    measured = peak_memory(allocate, torch.device("cpu"))
    if measured is None:
        pytest.skip("this kernel does not let the high-water mark be reset")
    assert 0.9 * size <= measured <= 1.5 * size
    assert peak_memory(lambda: None, torch.device("cpu")) < 0.1 * size


def test_bench_command_prints_every_field_on_a_tiny_model(capsys):
    args = ["bench", "--model", "vit_tiny_patch16_224", "--tiny", "--rounds", "2", "--batch-size", "2"]
    assert main([*args, "--img-size", "48", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# vit_tiny_patch16_224 (tiny): infer, fp32, eager, batch 2, 48x64, 2 rounds x 3 calls")
    assert "torch threads" in out[1] and f"torch {torch.__version__}" in out[1]
    header = ["library", "img/s", "spread", "(rounds)", "p50", "ms", "p90", "ms", "p99", "ms", "peak", "MB"]
    assert out[2].split() == header
    fields = out[3].split()
    assert fields[0] == "vitlab" and float(fields[1]) > 0 and len(fields) == 7
    low, high = map(float, fields[2].split("-"))
    assert low <= float(fields[1]) <= high
    assert main([*args, "--mode", "train"]) == 0
    assert "train, fp32" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_against_timm_without_timm_is_a_clear_error(capsys):
    args = ["bench", "--model", "vit_tiny_patch16_224", "--tiny", "--rounds", "2", "--against", "timm"]
    assert main(args) == 2
    assert "needs timm installed" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_against_timm_prints_both_sides_and_the_ratio_last(capsys):
    args = ["bench", "--model", "vit_tiny_patch16_224", "--tiny", "--rounds", "2", "--batch-size", "2"]
    assert main([*args, "--against", "timm"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[3].startswith("vitlab") and out[4].startswith("timm")
    assert out[-1].startswith("vitlab / timm: ") and "(rounds " in out[-1]


def test_fold_against_unfolded_measures_the_folded_model_beside_itself(capsys):
    args = ["bench", "--model", "convnet_tiny", "--tiny", "--rounds", "2", "--batch-size", "2", "--repeats", "1"]
    assert main([*args, "--against", "unfolded"]) == 2
    assert "add --fold" in capsys.readouterr().err
    assert main([*args, "--fold", "--mode", "train"]) == 2
    assert "--mode infer" in capsys.readouterr().err
    assert main([*args, "--fold", "--against", "unfolded"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "eager, folded" in out[0]
    assert out[3].startswith("vitlab folded") and out[4].startswith("unfolded")
    assert out[-1].startswith("vitlab folded / unfolded: ")


def test_channels_last_against_contiguous_feeds_each_side_its_layout(capsys, monkeypatch):
    import vitlab.bench as bench

    seen: dict[str, list[bool]] = {}
    build = bench.build_sides

    def recording_sides(config, device):
        sides = build(config, device)
        for label, model in sides:

            def record(module, args, label=label):
                seen.setdefault(label, []).append(args[0].is_contiguous(memory_format=torch.channels_last))

            model.register_forward_pre_hook(record)
        return sides

    monkeypatch.setattr(bench, "build_sides", recording_sides)
    args = ["bench", "--model", "convnet_tiny", "--tiny", "--rounds", "2", "--batch-size", "2", "--repeats", "1"]
    assert main([*args, "--against", "contiguous"]) == 2
    assert "add --channels-last" in capsys.readouterr().err
    assert main([*args, "--channels-last", "--against", "contiguous", "--img-size", "28", "36"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "eager, channels-last" in out[0]
    assert out[3].startswith("vitlab channels-last") and out[4].startswith("contiguous")
    assert out[-1].startswith("vitlab channels-last / contiguous: ")
    assert set(seen["vitlab channels-last"]) == {True} and set(seen["contiguous"]) == {False}
