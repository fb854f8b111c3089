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
from PIL import Image
from torch import Tensor

from vitlab.data.images import IMAGE_SUFFIXES, BadImageError, load_image


class DatasetError(ValueError):
    """A dataset that cannot be used: missing or empty folders, truncated files, bad labels."""


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


class ArrayDataset:
    """Images held in memory: uint8 `images` (N, C, H, W) and int64 `labels` (N,)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], source: str):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DatasetError(
                f"{source}: expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise DatasetError(f"{source}: {len(images)} images but {len(labels)} labels")
        check_labels(labels, len(classes), source)
        self.images, self.labels = images, labels.long()
        self.classes, self.source = list(classes), source
        self.channels, self.size = images.shape[1], (images.shape[2], images.shape[3])

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.images[indices], self.labels[indices]

    def subset(self, indices: Tensor, source: str) -> ArrayDataset:
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes, source)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Image files with labels, decoded to RGB uint8 (3, size, size): short side resized, centre cropped."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], size: int, source: str):
        self.files, self.labels = list(files), torch.tensor(list(labels), dtype=torch.long)
        self.classes, self.source = list(classes), source
        self.channels, self.size = 3, (size, size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return load_fixed_size(self.files[index], self.size[0]), int(self.labels[index])


def load_fixed_size(path: Path, size: int) -> Tensor:
    """Decode an image as RGB, resize its short side to `size` and centre-crop a square: uint8 (3, size, size)."""
    image = load_image(path)
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def check_labels(labels: Tensor, num_classes: int, source: str) -> None:
    if len(labels) == 0:
        return
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if len(bad):
        first = int(bad[0])
        raise DatasetError(
            f"{source}: label {int(labels[first])} of item {first} is out of range for {num_classes} classes "
            f"({len(bad)} labels out of range); labels must be 0..{num_classes - 1}"
        )


# Image folders.
def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_class_folders(root: Path, classes: Sequence[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """`root/<class>/*.jpg` -> files, labels, class names (sorted folder names unless `classes` is given)."""
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetError(f"data folder {root} has no class folders (expected {root}/<class>/<image files>)")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(f"{root} has class folders that the training set lacks: {', '.join(unknown)}")
    files, labels = [], []
    for name in found:
        images = _list_images(root / name)
        if not images:
            raise DatasetError(f"class folder {root / name} has no images (looked for {', '.join(IMAGE_SUFFIXES)})")
        files += images
        labels += [list(classes).index(name)] * len(images)
    return files, labels, list(classes)


def split_indices(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A reproducible per-class split: about `fraction` of each class (at least one image) goes to validation."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        count = min(len(members) - 1, max(1, round(len(members) * fraction))) if fraction > 0 else 0
        val += [members[j] for j in order[:count]]
        train += [members[j] for j in order[count:]]
    return sorted(train), sorted(val)


def _subfolder(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def image_folder_splits(root: Path, size: int, val_fraction: float, seed: int = 0) -> dict[str, ImageFolderDataset]:
    """`root/train/<class>`, `root/val/<class>` (and optional `root/test/<class>`), or one folder split by class."""
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    train_dir = _subfolder(root, ["train", "training"])
    if train_dir is None:
        files, labels, classes = scan_class_folders(root)
        train_idx, val_idx = split_indices(labels, val_fraction, seed)
        if not val_idx:
            raise DatasetError(f"{root} has no train/val sub-folders and val_fraction is 0: nothing to validate on")
        pick = lambda idx: ([files[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
        return {
            "train": ImageFolderDataset(*pick(train_idx), classes, size, f"{root} (train split)"),
            "val": ImageFolderDataset(*pick(val_idx), classes, size, f"{root} (validation split)"),
        }
    files, labels, classes = scan_class_folders(train_dir)
    splits = {"train": ImageFolderDataset(files, labels, classes, size, str(train_dir))}
    for split, names in (("val", ["val", "valid", "validation"]), ("test", ["test"])):
        folder = _subfolder(root, names)
        if folder is not None:
            f, lab, _ = scan_class_folders(folder, classes)
            splits[split] = ImageFolderDataset(f, lab, classes, size, str(folder))
    if "val" not in splits:
        train_idx, val_idx = split_indices(labels, val_fraction, seed)
        if not val_idx:
            raise DatasetError(f"{root} has no val folder and val_fraction is 0: nothing to validate on")
        splits["train"] = ImageFolderDataset(
            [files[i] for i in train_idx], [labels[i] for i in train_idx], classes, size, f"{train_dir} (train split)"
        )
        splits["val"] = ImageFolderDataset(
            [files[i] for i in val_idx], [labels[i] for i in val_idx], classes, size, f"{train_dir} (val split)"
        )
    return splits


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


def materialize(
    dataset: ImageFolderDataset, workers: int, skip_bad: bool, max_bytes: int = 2 << 30, progress: bool = False
) -> tuple[ArrayDataset | ImageFolderDataset, list[str]]:
    """Decode every image once, before training: a bad file is reported now, not hours later.

    Returns the dataset (in memory when it takes at most `max_bytes`) and the files skipped
    (only with `skip_bad`; otherwise the first bad file raises BadImageError).
    """
    keep = len(dataset) * 3 * dataset.size[0] * dataset.size[1] <= max_bytes
    loader = torch.utils.data.DataLoader(
        _Tolerant(dataset), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity
    )
    images, good, bad = [], [], []
    items = loader
    if progress:
        from tqdm import tqdm

        items = tqdm(loader, total=len(dataset), desc=f"checking {dataset.source}", leave=False)
    for index, (image, error) in enumerate(items):
        if error is not None:
            if not skip_bad:
                raise BadImageError(dataset.files[index], error + " (pass --skip-bad-images to skip such files)")
            bad.append(str(dataset.files[index]))
            continue
        good.append(index)
        if keep:
            images.append(image)
    if not good:
        raise DatasetError(f"{dataset.source}: none of its {len(dataset)} images could be read")
    labels = dataset.labels[good]
    if keep:
        return ArrayDataset(torch.stack(images), labels, dataset.classes, dataset.source), bad
    files = [dataset.files[i] for i in good]
    return ImageFolderDataset(files, labels.tolist(), dataset.classes, dataset.size[0], dataset.source), bad


class _Tolerant(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageFolderDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor | None, str | None]:
        try:
            return load_fixed_size(self.dataset.files[index], self.dataset.size[0]), None
        except BadImageError as err:
            return None, str(err).split(": ", 1)[-1]


def _identity(item):
    return item
