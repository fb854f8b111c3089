"""Datasets for training and evaluation.

Two kinds, one interface (`len(ds)`, `ds.classes`, `ds.channels`, `ds.size`):

- `ArrayDataset`: every image in memory as one uint8 (N, C, H, W) tensor. The IDX files of
  MNIST and Fashion-MNIST, the binary CIFAR-10/100 files, the built-in demo data, and image
  folders small enough to cache become this; a batch is one indexing operation.
- `ImageFolderDataset`: files decoded by loader workers, each resized (short side) and centre
  cropped to a fixed square `size` as uint8; random crops and the rest of augmentation happen
  afterwards, batched, on the training device (`vitlab.data.augment`).

`build_datasets(config)` picks the format from `--data` / `--data-dir` and returns the splits.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vitlab.data.arrays import ArrayDataset, DatasetError, check_labels
from vitlab.data.folders import ImageFolderDataset, image_folder_splits, load_fixed_size, materialize, split_indices

__all__ = [
    "ArrayDataset",
    "DataSplits",
    "DatasetError",
    "ImageFolderDataset",
    "build_datasets",
    "load_fixed_size",
    "materialize",
]


KNOWN_DATASETS = ("demo", "mnist", "fashion-mnist", "cifar10", "cifar100")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# IDX (MNIST, Fashion-MNIST).
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), raw or gzipped, as a numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError as err:
        raise DatasetError(f"{path} does not exist") from err
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path} is not a readable gzip file: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: the header needs {header} bytes, the file has {len(raw)}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(
            f"{path} is truncated or corrupt: its header declares shape {tuple(dims)} ({expected} bytes), "
            f"the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stems: Sequence[str]) -> Path:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
    raise DatasetError(f"{root} lacks {stems[0]} (or {stems[0]}.gz)")


def idx_dataset(root: Path, split: str, classes: Sequence[str]) -> ArrayDataset:
    prefix = "train" if split == "train" else "t10k"
    image_path = _find(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    label_path = _find(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{image_path}: expected uint8 images (N, H, W), found {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DatasetError(f"{label_path}: expected a vector of labels, found shape {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    check_labels(torch.from_numpy(labels.astype(np.int64)), len(classes), str(label_path))
    return ArrayDataset(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), classes, str(root)
    )


# CIFAR binary format.
def _cifar_root(root: Path, folder: str) -> Path:
    return root / folder if (root / folder).is_dir() else root


def read_cifar_binary(path: Path, label_bytes: int, label_index: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """Records of `label_bytes` label bytes followed by a 3x32x32 uint8 image (channel-major)."""
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + 3 * 32 * 32
    if raw.size == 0 or raw.size % record:
        raise DatasetError(
            f"{path} is truncated or not a CIFAR binary file: {raw.size} bytes is not a multiple of the "
            f"{record}-byte record"
        )
    rows = raw.reshape(-1, record)
    labels = torch.from_numpy(rows[:, label_index].astype(np.int64))
    check_labels(labels, num_classes, str(path))
    return torch.from_numpy(rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy()), labels


def _names_file(path: Path, fallback: Sequence[str]) -> list[str]:
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if names:
            return names
    return list(fallback)


def cifar_dataset(root: Path, split: str, num_classes: int) -> ArrayDataset:
    if num_classes == 10:
        root = _cifar_root(root, "cifar-10-batches-bin")
        classes = _names_file(root / "batches.meta.txt", CIFAR10_CLASSES)
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
        parts = [read_cifar_binary(root / n, 1, 0, 10) for n in names]
    else:
        root = _cifar_root(root, "cifar-100-binary")
        classes = _names_file(root / "fine_label_names.txt", [str(i) for i in range(100)])
        parts = [read_cifar_binary(root / f"{'train' if split == 'train' else 'test'}.bin", 2, 1, 100)]
    return ArrayDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), classes, str(root))


# The built-in demo data.
DEMO_PACKAGE = "vitlab.data.demo"


def demo_root() -> Path:
    return Path(str(resources.files(DEMO_PACKAGE)))


def demo_dataset(split: str) -> ArrayDataset:
    """A class-balanced subset of Fashion-MNIST shipped with vitlab (MIT licence, Zalando SE)."""
    root = demo_root()
    classes = json.loads((root / "classes.json").read_text())
    return idx_dataset(root, split, classes)


@dataclass
class DataSplits:
    train: ArrayDataset | ImageFolderDataset
    val: ArrayDataset | ImageFolderDataset
    test: ArrayDataset | ImageFolderDataset
    classes: list[str]
    name: str
    notes: list[str] = field(default_factory=list)


def build_datasets(
    data: str, data_dir: str | None, folder_size: int, val_fraction: float = 0.1, holdout: float = 0.0
) -> DataSplits:
    """The splits of `data` (a known name or a directory of image folders).

    Array datasets have train and test splits; their test split also serves for validation (the
    usual protocol for these benchmarks) unless `holdout` > 0 holds that fraction of each class of
    the training split out for validation (always the same images), which leaves the test split
    for the final measurement only. Image folders: `train`/`val`/`test` sub-folders, or one folder
    split reproducibly per class by `val_fraction`; without `test` the validation split is the test split.
    """
    if not 0.0 <= holdout < 1.0:
        raise DatasetError(f"holdout must be in [0, 1), got {holdout}")
    name = data.lower()
    if name in KNOWN_DATASETS:
        if name == "demo":
            train, test = demo_dataset("train"), demo_dataset("test")
        else:
            if data_dir is None:
                raise DatasetError(f"--data {data} needs --data-dir: the folder that holds its files")
            root = Path(data_dir)
            if not root.is_dir():
                raise DatasetError(f"data folder {root} does not exist")
            if name in ("mnist", "fashion-mnist"):
                classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
                train, test = idx_dataset(root, "train", classes), idx_dataset(root, "test", classes)
            else:
                count = 10 if name == "cifar10" else 100
                train, test = cifar_dataset(root, "train", count), cifar_dataset(root, "test", count)
        if holdout == 0:
            return DataSplits(train, test, test, train.classes, name, ["the test split is also the validation split"])
        kept, held = split_indices(train.labels.tolist(), holdout, seed=0)
        note = f"{len(held)} of the {len(train)} training images validate; the test split waits for the end"
        return DataSplits(
            train.subset(torch.tensor(kept), f"{train.source} (training part)"),
            train.subset(torch.tensor(held), f"{train.source} (held out)"),
            test,
            train.classes,
            name,
            [note],
        )
    if holdout:
        raise DatasetError(
            f"holdout is for the datasets with a fixed train/test split ({', '.join(KNOWN_DATASETS)}); "
            "an image folder's validation split is its val folder or --val-fraction"
        )
    folder = Path(data)
    if not folder.exists():
        hint = "" if "/" in data or "\\" in data else f" (known datasets: {', '.join(KNOWN_DATASETS)})"
        raise DatasetError(f"data folder {folder} does not exist{hint}")
    splits = image_folder_splits(folder, folder_size, val_fraction)
    notes = [] if "test" in splits else ["no test folder: the validation split is also the test split"]
    return DataSplits(
        splits["train"], splits["val"], splits.get("test", splits["val"]), splits["train"].classes, str(folder), notes
    )
