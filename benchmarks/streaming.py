"""Peak memory and throughput of `vitlab predict` and `vitlab eval` on folders of many small images.

Streaming means the peak resident memory does not grow with the number of files: this script writes
folders of N and 10N small PNGs (default 1,000 and 10,000), runs each command on each in a fresh
process, and prints the peak RSS (from wait4), the wall time of the process (start-up included) and
the images per second the command itself reports (reading, decoding and scoring, after start-up). A
tiny DeiT keeps the model's share of the time small, so the figures measure the data path.

    python benchmarks/streaming.py [--counts 1000 10000] [--workers 0] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

MODEL = "deit_tiny_patch16_224"
ARGS = {"num_classes": 2, "img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}


def write_images(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return root


def write_checkpoint(path: Path) -> Path:
    import vitlab

    torch.manual_seed(0)
    model = vitlab.create_model(MODEL, **ARGS)
    metadata = {"vitlab_model": MODEL, "vitlab_model_args": json.dumps(ARGS), "class_names": '["a", "b"]'}
    save_file(model.state_dict(), path, metadata=metadata)
    return path


def measure(argv: list[str]) -> tuple[float, float, float]:
    """(seconds, peak RSS in MiB, images/s the command reports) of `python -m vitlab ARGV` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vitlab", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    reported = re.search(r"\(([0-9.]+) images/s", proc.stderr.read().decode())
    if reported is None:
        raise SystemExit(f"{' '.join(argv)} printed no throughput")
    return seconds, usage.ru_maxrss / 1024, float(reported.group(1))  # Linux reports ru_maxrss in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "model.safetensors")
        print(f"{'command':8} {'images':>7} {'wall s':>7} {'images/s':>9} {'peak RSS':>10}")
        for count in args.counts:
            folder = write_images(Path(tmp) / f"images{count}", count)
            common = ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
            runs = {
                "predict": ["predict", "--checkpoint", str(checkpoint), *common, str(folder)],
                "eval": ["eval", "--checkpoint", str(checkpoint), "--data", str(folder), "--device", "cpu", *common],
            }
            for name, argv in runs.items():
                seconds, rss, rate = measure(argv)
                print(f"{name:8} {count:7d} {seconds:7.1f} {rate:9.1f} {rss:8.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
