"""Image folders: `root/<class>/<images>`, optionally under `train/`, `val/`, `test/`; decoding, checking."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vitlab.data.arrays import ArrayDataset, DatasetError, guard_workers
from vitlab.data.images import IMAGE_SUFFIXES, SKIP_HINT, BadImageError, load_image


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

    def subset(self, indices: Tensor, source: str) -> ImageFolderDataset:
        chosen = indices.tolist()
        return ImageFolderDataset(
            [self.files[i] for i in chosen], self.labels[indices].tolist(), self.classes, self.size[0], source
        )


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


def list_images(folder: Path) -> list[Path]:
    """The image files of `folder`, by suffix. Links that lead nowhere (dangling, looping) are kept, so
    that reading them names them as bad images instead of their silently disappearing from the data."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))


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
            raise DatasetError(
                f"{root} has class folders that are not among the classes: {', '.join(unknown)} "
                f"(the classes: {', '.join(classes)})"
            )
    files, labels = [], []
    for name in found:
        images = list_images(root / name)
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


def balanced_subset(labels: Sequence[int], count: int, seed: int) -> list[int]:
    """`count` indices drawn reproducibly with every class as equally represented as its images allow.

    Classes take turns: each round gives one more image to every class that still has some, so the
    per-class counts differ by at most one unless a class runs out. Within a class the images are
    a random permutation drawn from `seed`. Returns sorted indices.
    """
    if not 0 < count <= len(labels):
        raise DatasetError(f"cannot take {count} of {len(labels)} images")
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    queues = {
        c: [by_class[c][j] for j in torch.randperm(len(by_class[c]), generator=generator)] for c in sorted(by_class)
    }
    order = torch.randperm(len(queues), generator=generator).tolist()  # which classes get the odd extra images
    classes = [sorted(queues)[j] for j in order]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:
        for c in classes:
            if depth < len(queues[c]) and len(chosen) < count:
                chosen.append(queues[c][depth])
        depth += 1
    return sorted(chosen)


def _subfolder(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test",)}


def evaluation_folder(root: Path, split: str, size: int, classes: Sequence[str] | None) -> ImageFolderDataset:
    """The images of `root` that `vitlab eval` scores, labelled by folder name against `classes`.

    `split` "all" takes every image: of `root/<class>/` or, for a tree with split folders, of all of
    them; "train", "val", "test" take that split folder. Each class folder gets the index of its name
    in `classes` (the model's), so folders may sort differently or miss classes; a folder whose name
    is not a class is an error. Without `classes` the sorted folder names are the classes.
    """
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    has_splits = any(_subfolder(root, names) for names in SPLIT_FOLDERS.values())
    if split == "all" and not has_splits:
        folders = [root]
    elif split == "all":
        folders = [f for names in SPLIT_FOLDERS.values() if (f := _subfolder(root, names)) is not None]
    else:
        folder = _subfolder(root, SPLIT_FOLDERS[split])
        if folder is None:
            raise DatasetError(
                f"{root} has no {split} folder (looked for {', '.join(SPLIT_FOLDERS[split])}); "
                f"--split all scores every image"
            )
        folders = [folder]
    if classes is None:
        classes = sorted({p.name for f in folders for p in f.iterdir() if p.is_dir() and not p.name.startswith(".")})
    files, labels = [], []
    for folder in folders:
        found, found_labels, _ = scan_class_folders(folder, classes)
        files += found
        labels += found_labels
    return ImageFolderDataset(files, labels, classes, size, f"{root} ({split})")


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
    items = guard_workers(loader, dataset.source)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(dataset), desc=f"checking {dataset.source}", leave=False)
    for index, (image, error) in enumerate(items):
        if error is not None:
            if not skip_bad:
                raise BadImageError(dataset.files[index], error + SKIP_HINT)
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
            return None, err.reason


def _identity(item):
    return item
