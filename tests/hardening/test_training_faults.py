"""Faults during training: SIGKILL in the middle of a checkpoint write, a full disk, a file-size limit, a data-loader
worker that dies, NaN in the loss under mixed precision. In each case the run stops with one clear
message (or is killed), the previous checkpoint is intact, and the same command with --resume
finishes with exactly the weights of a run that was never interrupted."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.train.tiny import train_args, write_mnist
from vitlab.cli import main
from vitlab.train import checkpoint as ckpt

WORKER = str(Path(__file__).with_name("fault_worker.py"))


def position(path: Path) -> tuple[int, int]:
    state = torch.load(path, weights_only=True)
    return int(state["epoch"]), int(state["step"])


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: 2 epochs of 4 steps, a checkpoint every 2 steps and after each epoch (4 writes)."""
    root = tmp_path_factory.mktemp("reference")
    data = write_mnist(root / "data")
    # One thread in every run compared: float sums depend on the thread count, which vitlab otherwise
    # picks from the cores idle at start.
    args = lambda out: ["--threads", "1", *train_args(data, out, "--checkpoint-every", "2", epochs=2)]  # noqa: E731
    assert main(args(root / "run")) == 0
    return args, root / "run"


def test_sigkill_in_the_middle_of_a_checkpoint_write_loses_nothing(reference, tmp_path):
    args, expected = reference
    run, marker = tmp_path / "run", tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "VITLAB_TEST_STALL_AT": "3",
           "VITLAB_TEST_STALL_MARKER": str(marker)}  # fmt: skip
    proc = subprocess.Popen([sys.executable, WORKER, *args(run)], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # generous: the shared test machines can be very loaded
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), "the run never reached its third checkpoint write"
    proc.send_signal(signal.SIGKILL)  # the new checkpoint is in a temporary file, not yet renamed
    proc.wait()
    half_written = list(run.glob(".checkpoint-last.pt.*.tmp"))
    assert len(half_written) == 1 and half_written[0].stat().st_size > 0
    assert position(run / "checkpoint-last.pt") == (1, 0)  # the second write (the end of epoch 1) survives
    assert main([*args(run), "--resume"]) == 0
    assert not list(run.glob(".*.tmp"))  # the half-written file was cleared away
    assert same_weights(expected, run)


def test_a_full_disk_stops_the_run_with_a_message_and_keeps_the_last_checkpoint(reference, tmp_path, monkeypatch,
                                                                                capsys):  # fmt: skip
    args, expected = reference
    run = tmp_path / "run"
    real_fdopen, writes = os.fdopen, [0]

    class FullDisk:
        """A file on a disk that fills up: the write of the fourth checkpoint gets ENOSPC."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".checkpoint-last.pt." in name:
            writes[0] += 1
            if writes[0] == 4:
                return FullDisk(f)
        return f

    monkeypatch.setattr(ckpt.os, "fdopen", fdopen)
    assert main(args(run)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not write {run / 'checkpoint-last.pt'}") and "No space left on device" in err
    assert "the previous checkpoint-last.pt is intact" in err and "--resume" in err
    assert position(run / "checkpoint-last.pt") == (1, 2) and not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    assert main([*args(run), "--resume"]) == 0  # space freed: the same command continues
    assert same_weights(expected, run)


def test_a_file_size_limit_enforced_by_the_kernel_stops_the_run_with_a_message(reference, tmp_path):
    """Not an intercepted write: the kernel refuses the bytes past RLIMIT_FSIZE (see fault_worker.py)."""
    args, expected = reference
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "VITLAB_TEST_FSIZE_AT": "2"}
    done = subprocess.run([sys.executable, WORKER, *args(run)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    limit = (run / "checkpoint-last.pt").stat().st_size // 2
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: could not write {run / 'checkpoint-last.pt'}") and "File too large" in err, err
    assert f"at most {limit:,} bytes (ulimit -f)" in err and "the previous checkpoint-last.pt is intact" in err
    assert position(run / "checkpoint-last.pt") == (0, 2) and not list(run.glob(".*.tmp"))
    assert main([*args(run), "--resume"]) == 0  # the limit lifted: the same command continues
    assert same_weights(expected, run)


def image_folder(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                    root / split / label / f"{i}.png"
                )
    return root


def test_a_data_loader_worker_that_dies_is_a_clear_error_not_a_hang(tmp_path, monkeypatch, capsys):
    from vitlab.data import loader

    data, parent = image_folder(tmp_path / "data"), os.getpid()
    real = loader.load_fixed_size

    def decode(path, size):
        if os.getpid() != parent and path.name == "3.png":
            os.kill(os.getpid(), signal.SIGKILL)  # the kernel's OOM killer does this
        return real(path, size)

    monkeypatch.setattr(loader, "load_fixed_size", decode)
    args = ["train", "--data", str(data), "--model", "vit_tiny_patch16_224", "--model-args",
            '{"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}', "--img-size", "8", "--epochs", "1",
            "--batch-size", "4", "--workers", "2", "--no-check-images", "--output", str(tmp_path / "run"),
            "--progress", "off"]  # fmt: skip
    began = time.monotonic()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - began < 120
    assert err.startswith("error: a data-loading worker died while reading") and "--workers" in err, err
    assert "DataLoader worker" in err  # torch says "killed by signal" or "exited unexpectedly"


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_nan_loss_under_mixed_precision_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, amp,
                                                                                 dtype):  # fmt: skip
    from vitlab.train.tasks.classification import ClassificationTask

    data = write_mnist(tmp_path / "data")
    real, calls = ClassificationTask.loss, [0]

    def loss(self, module, images, labels, autocast):
        calls[0] += 1
        assert isinstance(autocast, torch.autocast) and autocast.fast_dtype == dtype  # the step runs in it
        value = real(self, module, images, labels, autocast)
        return value * float("nan") if calls[0] == 6 else value

    monkeypatch.setattr(ClassificationTask, "loss", loss)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "slower than float32 here" on CPUs without native bf16 / fp16
        assert main(train_args(data, run, "--amp", amp, "--device", "cpu", epochs=3)) == 3
    err = capsys.readouterr().err
    assert "the loss became nan at step 6 (epoch 2, batch 2 of 4)" in err
    assert f"the last good checkpoint is {run / 'checkpoint-last.pt'} (epoch 1)" in err
    assert position(run / "checkpoint-last.pt") == (1, 0) and not (run / "model.safetensors").exists()
    scaler = torch.load(run / "checkpoint-last.pt", weights_only=True).get("scaler")
    assert (scaler is not None and scaler["scale"] > 0) == (amp == "fp16")  # float16 trains with a loss scaler


def torchrun(args: list[str], env: dict, timeout: float) -> tuple[int, str, float]:
    """A two-process run under torchrun (in its own session, so that a hang is killed whole)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER, *args]
    began = time.monotonic()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the run did not end within {timeout}s:\n{output[-3000:]}")
    return proc.returncode, output, time.monotonic() - began


@pytest.mark.slow  # three two-process torchrun launches: 41 s on an idle 2-core machine
def test_one_of_two_ddp_processes_killed_the_other_stops_and_the_resubmitted_run_resumes_exactly(tmp_path):
    data = write_mnist(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    args = lambda out: train_args(data, out, "--checkpoint-every", "2", epochs=2)  # noqa: E731
    code, output, _ = torchrun(args(tmp_path / "reference"), env, 300)
    assert code == 0, output[-3000:]
    run = tmp_path / "run"
    code, output, seconds = torchrun(
        args(run), {**env, "VITLAB_TEST_KILL_RANK": "1", "VITLAB_TEST_KILL_STEP": "6"}, 300
    )
    assert code != 0 and seconds < 240
    # Either its collective fails first, or torchrun's SIGTERM (sent when a process dies) arrives first.
    lost = re.search(r"error: process 0 of 2 (lost the other processes|was stopped by SIGTERM).*--resume", output)
    assert lost, output[-3000:]
    assert position(run / "checkpoint-last.pt") == (1, 0)
    code, output, _ = torchrun([*args(run), "--resume"], env, 300)
    assert code == 0, output[-3000:]
    assert same_weights(tmp_path / "reference", run)


def test_sigterm_during_a_multi_process_run_stops_it_with_the_message_and_restores_the_handler(tmp_path):
    # torchrun sends SIGTERM to the surviving processes when one dies, often before their collective fails.
    from vitlab.train.distributed import DistInfo, PeerLostError, peers_watched

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(PeerLostError) as caught, peers_watched(DistInfo(rank=1, world_size=2), tmp_path):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at the next bytecode, long before this ends
    message = str(caught.value)
    assert message.startswith("process 1 of 2 was stopped by SIGTERM") and f"{tmp_path} stands" in message, message
    assert message.endswith("resubmit the same command with --resume")
    assert signal.getsignal(signal.SIGTERM) == before
    with peers_watched(DistInfo(), tmp_path):  # one process: SIGTERM keeps its usual meaning
        assert signal.getsignal(signal.SIGTERM) == before
