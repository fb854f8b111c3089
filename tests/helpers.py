"""Shared test utilities."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the parity measure used throughout vitlab."""
    diff = (actual.double() - expected.double()).abs().max()
    return (diff / expected.double().abs().max().clamp_min(1e-12)).item()


def count_saved_tensors(fn: Callable[[], object]) -> tuple[object, int]:
    """`fn()`'s result and how many tensors autograd saved for the backward pass while it ran."""
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, saved


def assert_same_weights(expected: dict, actual: dict, embed_dim: int, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Two trainings' weights agree, except for the attention's key bias.

    The key bias adds the same score to a query's every key, which softmax ignores: its exact
    gradient is 0, so its value is rounding noise that Adam's normalisation blows up to ~lr.
    """
    assert expected.keys() == actual.keys()
    for key in expected:
        a, b = expected[key], actual[key]
        if key.endswith("attn.qkv.bias"):
            a, b = torch.cat([a[:embed_dim], a[2 * embed_dim :]]), torch.cat([b[:embed_dim], b[2 * embed_dim :]])
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=key)


def run_two_processes(worker: Path, args: list[str], timeout: float) -> tuple[str, str]:
    """`worker args...` as two processes under torchrun (one thread each); its stdout and stderr, after
    asserting that it succeeded. torchrun runs in its own session and starts each worker in another:
    after `timeout` it is stopped with SIGTERM, which stops its workers (SIGKILL would orphan them)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), *args]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, stderr


def assert_state_dict_round_trip(model: torch.nn.Module, other: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """`other`, built with other weights, computes exactly `model`'s outputs once it has loaded `model`'s
    state dict (strictly); both in eval mode."""
    model.eval()
    other.eval()
    with torch.no_grad():
        assert not torch.allclose(model(*inputs), other(*inputs))  # else the check below could not fail
        other.load_state_dict(model.state_dict(), strict=True)
        assert torch.equal(model(*inputs), other(*inputs))


def graph_branch_error(model: torch.nn.Module, x: torch.Tensor, monkeypatch) -> float:
    """Max relative error of `model(x)` run through its graph branch (the ONNX tracer said to be running, so
    every `in_graph()` plan is built from tensor operations) against its eager branch."""
    with torch.no_grad():
        expected = model(x)
        with monkeypatch.context() as patch:
            patch.setattr(torch.jit, "is_tracing", lambda: True)
            actual = model(x)
    return max_rel_error(actual, expected)


def graphs_compiled(module: torch.nn.Module, inputs: list[torch.Tensor]) -> int:
    """How many graphs dynamo compiles (`fullgraph=True`, eager backend) for `module` over `inputs`, each
    output checked against the plain forward."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    for x in inputs:
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), module(x), rtol=1e-5, atol=1e-6)
    return counter.frame_count
