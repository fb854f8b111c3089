"""Image-to-sequence trained by `vitlab train`, the same loop and guarantees as classification: a run
killed with SIGKILL at arbitrary moments and resumed ends with exactly the weights of an uninterrupted run."""

import json
import random

import torch
from safetensors.torch import load_file

from tests.train.test_resume import _start_then_kill
from tests.train.tiny import write_mnist
from vitlab.cli import main

TINY_STRIPS = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_layers": 1,
               "decoder_heads": 2, "ffn_dim": 32, "max_images": 4}  # fmt: skip


def strip_args(data, output, *extra: str, epochs: int = 3) -> list[str]:
    return [
        "train", "--model", "image_to_sequence_vit", "--data", "mnist", "--data-dir", str(data), "--output",
        str(output), "--model-args", json.dumps(TINY_STRIPS), "--epochs", str(epochs), "--batch-size", "16",
        "--strips", "64", "--strip-min", "2", "--strip-max", "4", "--lr", "3e-3", "--lr-scaling", "none",
        "--warmup-epochs", "0.5", "--workers", "0", "--progress", "off", "--checkpoint-every", "1", *extra,
    ]  # fmt: skip


def test_a_seq2seq_run_trains_and_reports_sequence_and_token_accuracy(tmp_path):
    data = write_mnist(tmp_path / "data", train=64, test=32)
    assert main(["--threads", "1", *strip_args(data, tmp_path / "run", epochs=2)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"test_seq_acc", "test_token_acc", "best_val_seq_acc"} <= summary.keys()
    assert 0.0 <= summary["test_seq_acc"] <= 100.0 and 0.0 <= summary["test_token_acc"] <= 100.0
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_seq_acc" in header and "val_token_acc" in header


def test_a_killed_seq2seq_run_resumes_to_bit_identical_weights(tmp_path):
    data = write_mnist(tmp_path / "data", train=64, test=32)
    reference = tmp_path / "reference"
    assert main(["--threads", "1", *strip_args(data, reference, epochs=16)]) == 0

    killed = tmp_path / "killed"
    args = ["--threads", "1", *strip_args(data, killed, epochs=16), "--resume"]
    rng = random.Random(1)  # 16 short epochs: a kill at epoch 4 still lands well before the run ends
    positions = [_start_then_kill(args, killed, target, rng.uniform(0.0, 0.02)) for target in [(1, 2), (3, 1)]]
    assert positions == sorted(positions) and positions[-1][0] < 16
    assert main(args) == 0
    expected, actual = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert (reference / "metrics.csv").read_text().splitlines()[-1].split(",")[:5] == (
        (killed / "metrics.csv").read_text().splitlines()[-1].split(",")[:5]
    )
