"""Tiny datasets and models that make training tests run in seconds."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

TINY_VIT = {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "in_chans": 1}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def learnable_images(count: int, size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise over a texture that says the class (flat, horizontal or vertical stripes, checks): every
    patch shows it, so even a one-block model learns it in a few steps, whatever the crop.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    rows, cols = np.indices((size, size))
    textures = [np.zeros((size, size)), rows % 2, cols % 2, (rows + cols) % 2]
    images = rng.integers(0, 60, (count, size, size)) + 180 * np.stack([textures[k % 4] for k in labels])
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(root: Path, train: int = 64, test: int = 32, size: int = 8, classes: int = 4, gz: bool = False) -> Path:
    """MNIST-layout IDX files (labels 0..classes-1) in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = learnable_images(count, size, classes, seed)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


def train_args(data_dir: Path, output: Path, *extra: str, epochs: int = 2, batch: int = 16) -> list[str]:
    return [
        "train",
        "--data",
        "mnist",
        "--data-dir",
        str(data_dir),
        "--output",
        str(output),
        "--model-args",
        json.dumps(TINY_VIT),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch),
        "--lr",
        "1e-2",
        "--lr-scaling",
        "none",
        "--warmup-epochs",
        "0.5",
        "--crop",
        "none",
        "--hflip",
        "0",
        "--workers",
        "0",
        "--progress",
        "off",
        *extra,
    ]
