"""Write vitlab's built-in demo dataset: a class-balanced subset of Fashion-MNIST, as gzipped IDX files.

    python tools/make_demo_data.py /path/to/fashion-mnist [--train-per-class 300 --test-per-class 100]

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017) is (c) Zalando SE under the MIT licence, which is
copied next to the files. The subset is chosen by a fixed seed, so the output is reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from vitlab.data.datasets import FASHION_MNIST_CLASSES, read_idx  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "src" / "vitlab" / "data" / "demo"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]
    return np.sort(np.concatenate(picked))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path, help="folder with Fashion-MNIST's four IDX files (.gz or raw)")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for split, prefix, count in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        keep = balanced(labels, count, rng)
        write_idx(OUT / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx(OUT / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{split}: {len(keep)} images")
    (OUT / "classes.json").write_text(json.dumps(FASHION_MNIST_CLASSES) + "\n")


if __name__ == "__main__":
    main()
