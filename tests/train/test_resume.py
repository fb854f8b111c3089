"""A run killed with SIGKILL at an arbitrary moment and resumed ends with exactly the weights of an
uninterrupted run; checkpoints are written atomically."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.train.tiny import train_args, write_mnist
from vitlab.cli import main
from vitlab.train import checkpoint as ckpt
from vitlab.train.config import make_config
from vitlab.train.rundir import RunDir

# Every random part of the recipe is on: crops, flips, erasing, Mixup/CutMix, drop path, EMA,
# and a checkpoint in the middle of each epoch as well as at its end.
RANDOM_RECIPE = [
    "--crop", "pad", "--crop-padding", "1", "--hflip", "0.5", "--mixup", "0.8", "--cutmix", "1.0",
    "--reprob", "0.5", "--drop-path", "0.1", "--ema", "--ema-decay", "0.9", "--checkpoint-every", "3",
    "--clip-grad", "1.0",
]  # fmt: skip


def _checkpoint_position(path) -> tuple[int, int] | None:
    try:
        state = torch.load(path, weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return None
    return int(state["epoch"]), int(state["step"])


def _start_then_kill(args, output, target, delay, command=("-m", "vitlab")):
    """Start the run (the same command every time, as a scheduler resubmits it), let it write its
    checkpoint at (epoch, step) `target` or later, wait `delay` seconds more (somewhere inside the next
    steps or a checkpoint write), then SIGKILL it; returns where its last checkpoint is.

    Kills are placed by training position, not by wall time alone: on a fast machine a time-only kill
    can land after the last step, while the run writes its final files."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, *command, *args], env=env, stdout=subprocess.DEVNULL)
    deadline, position = time.monotonic() + 600, None  # generous: a loaded machine starts Python slowly
    while time.monotonic() < deadline and proc.poll() is None:
        position = _checkpoint_position(output / "checkpoint-last.pt")
        if position is not None and position >= target:
            break
        time.sleep(0.005)
    if position is None or position < target:
        proc.kill()
        pytest.fail(f"the run did not reach (epoch, step) {target} (it reached {position}) within 600 s")
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (output / "model.safetensors").exists()
    return _checkpoint_position(output / "checkpoint-last.pt")


def test_killed_three_times_at_random_moments_then_resumed_gives_bit_identical_weights(tmp_path):
    data = write_mnist(tmp_path / "data", train=64)
    recipe = [*RANDOM_RECIPE, "--checkpoint-every", "1"]  # a checkpoint after every optimiser step
    reference = tmp_path / "reference"
    assert main(["--threads", "1", *train_args(data, reference, *recipe, epochs=12)]) == 0

    killed = tmp_path / "killed"
    args = [*train_args(data, killed, *recipe, epochs=12), "--resume"]  # --resume starts a run that has no checkpoint
    args = ["--threads", "1", *args]  # the same settings as the reference: float sums depend on the thread count
    rng = random.Random(0)
    targets = [(1, 2), (4, 1), (8, 3)]  # (epoch, step) of 12 epochs x 4 steps; two are mid-epoch
    positions = [_start_then_kill(args, killed, target, rng.uniform(0.0, 0.02)) for target in targets]
    assert any(step != 0 for _, step in positions), positions  # some kills came in the middle of an epoch
    assert positions == sorted(positions) and positions[-1][0] < 12
    assert main(args) == 0

    expected, actual = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    ref_state = torch.load(reference / "checkpoint-last.pt", weights_only=True)
    new_state = torch.load(killed / "checkpoint-last.pt", weights_only=True)
    for key in ref_state["model"]:
        assert torch.equal(ref_state["model"][key], new_state["model"][key]), key
    assert (reference / "metrics.csv").read_text().splitlines()[-1].split(",")[:6] == (
        (killed / "metrics.csv").read_text().splitlines()[-1].split(",")[:6]
    )


# Segmentation: every random part of its pipeline (rescale, crop with cat_max_ratio, flip, photometric
# distortion), BatchNorm and an auxiliary head, on the toy segmenter registered in the subprocess.
SEG_COMMAND = ("-c", "import sys; from tests.segmentation.toy import register; register(); "
               "from vitlab.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip


def test_a_killed_segmentation_run_resumes_to_bit_identical_weights(tmp_path):
    from tests.segmentation.data import train_args as seg_args
    from tests.segmentation.data import write_folder
    from tests.segmentation.toy import registered

    data = write_folder(tmp_path / "data", train=16, val=4, size=(20, 28))
    recipe = ["--model-args", '{"aux": true}', "--checkpoint-every", "1", "--ratio-range", "0.5", "2.0"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    with registered():
        assert main(["--threads", "1", *seg_args(data, reference, *recipe, epochs=12)]) == 0
        args = ["--threads", "1", *seg_args(data, killed, *recipe, epochs=12), "--resume"]
        positions = [_start_then_kill(args, killed, target, 0.01, SEG_COMMAND) for target in [(2, 1), (7, 2)]]
        assert positions == sorted(positions) and positions[-1][0] < 12
        assert main(args) == 0
    expected, actual = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert (reference / "metrics.csv").read_text().splitlines()[-1].split(",")[:7] == (
        (killed / "metrics.csv").read_text().splitlines()[-1].split(",")[:7]
    )


def test_resume_from_a_mid_epoch_checkpoint(tmp_path, monkeypatch):
    data = write_mnist(tmp_path / "data", train=64)
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    assert main(train_args(data, reference, *RANDOM_RECIPE, epochs=2)) == 0

    real_write = RunDir.write_checkpoint

    def write_then_crash(self, payload):
        real_write(self, payload)
        if payload["epoch"] == 1 and payload["step"] == 3:  # inside the second epoch, step 3 of 4
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(RunDir, "write_checkpoint", write_then_crash)
    args = train_args(data, crashed, *RANDOM_RECIPE, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.undo()
    assert torch.load(crashed / "checkpoint-last.pt", weights_only=True)["step"] == 3
    assert main([*args, "--resume"]) == 0
    expected, actual = load_file(reference / "model.safetensors"), load_file(crashed / "model.safetensors")
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_checkpoint_loads_with_weights_only(tmp_path):
    data = write_mnist(tmp_path / "data")
    assert main(train_args(data, tmp_path / "run", "--ema", epochs=1)) == 0
    state = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    assert {"model", "optimizer", "ema", "rng", "config", "epoch", "history"} <= state.keys()
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-last.pt"
    ckpt.atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)

    def crash(fd):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_torch_save({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pt"]  # no temporary file left behind


def test_rng_states_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.set_rng_state(torch.load(_save_load(state), weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def _save_load(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_a_resumed_run_takes_the_thread_count_it_started_with(tmp_path):
    from vitlab.train.distributed import DistInfo
    from vitlab.train.run import prepare
    from vitlab.train.rundir import RunDir

    data = write_mnist(tmp_path / "data", train=32)
    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", *train_args(data, tmp_path / "run", epochs=1)]) == 0
        config = make_config(RunDir(tmp_path / "run").read_config() | {"output": str(tmp_path / "run")})
        torch.set_num_threads(2)
        prepare(config, resume=True, info=DistInfo())  # float sums depend on the count: the run's own
        assert torch.get_num_threads() == 1
        prepare(config, resume=True, info=DistInfo(), threads=2)  # unless asked otherwise
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
