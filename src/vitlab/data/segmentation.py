"""Segmentation datasets: images with a mask of class indices per pixel (255 = ignored).

Layouts (`find_segmentation_data`):
- a folder `DIR/{train,val}/images/*.jpg|png` with `DIR/{train,val}/masks/<same stem>.png`
  (optional `DIR/test/`); class names from `DIR/classes.json` (a list) or `DIR/classes.txt`
  (one a line), else "0", "1", ... up to the largest label found;
- ADE20K (`--data ade20k --data-dir .../ADEChallengeData2016`): `images/{training,validation}`,
  `annotations/...`; 150 classes with mmseg's `reduce_zero_label` (0 "other" -> 255, k -> k - 1);
- Pascal VOC 2012 (`--data voc --data-dir .../VOC2012`): `JPEGImages`, palette PNGs in
  `SegmentationClass`, the lists `ImageSets/Segmentation/{train,val}.txt`; 21 classes, 255 borders;
- Cityscapes (`--data cityscapes`): `leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` with
  `gtFine/.../*_gtFine_labelIds.png`, mapped to the 19 train ids (other ids -> 255).

A mask is a palette PNG (its indices are the labels) or a grayscale PNG; an RGB mask, a mask of
another size than its image, or a label that is neither a class nor 255 is an error naming the
file and the value. Training batches are formed at one size: each pair is "letterboxed" (resized,
keeping its aspect, so that its long side is `size`, then padded to a square with black pixels
and label 255), so that the random rescale and crop can run batched on the device
(`vitlab.data.seg_augment`). Evaluation reads each image at that scale (long side `size`, no
padding) and keeps its mask at the original resolution, where mmseg measures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from vitlab.data.arrays import DatasetError, guard_workers
from vitlab.data.folders import list_images
from vitlab.data.images import IMAGE_SUFFIXES, SKIP_HINT, load_image
from vitlab.data.seg_layouts import LAYOUTS
from vitlab.segmentation.base import IGNORE_INDEX


def identity_map() -> np.ndarray:
    return np.arange(256, dtype=np.int64)


def read_mask(path: Path, label_map: np.ndarray | None = None) -> np.ndarray:
    """A palette or grayscale PNG as uint8 labels (H, W), through `label_map` (raw value -> label, -1: invalid)."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                raise DatasetError(
                    f"mask {path} is an {mode} image; a mask must be a palette or grayscale PNG of class indices"
                )
            array = np.asarray(image)
    except FileNotFoundError as err:
        raise DatasetError(f"mask {path} does not exist") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"cannot read mask {path}: {err}") from err
    if array.ndim != 2:
        raise DatasetError(f"mask {path} has shape {array.shape}; expected one value per pixel")
    raw = array.astype(np.int64)
    if raw.min() < 0 or raw.max() > 255:
        bad = int(raw.max()) if raw.max() > 255 else int(raw.min())
        raise DatasetError(f"mask {path} holds the value {bad}; labels must be 0..255 (255 = ignored)")
    mapped = raw if label_map is None else label_map[raw]
    return mapped.astype(np.int64)


def check_labels(mask: np.ndarray, num_classes: int, path: Path, raw_of=None) -> None:
    """Every label is a class index or 255; the error names the file and the first value at fault."""
    bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = sorted(set(np.unique(mask[bad]).tolist()))
        shown = values if raw_of is None else sorted({int(v) for v in raw_of[bad]})
        raise DatasetError(
            f"mask {path} holds the label {shown[0]} ({len(shown)} bad values: {shown[:8]}), not a class of "
            f"0..{num_classes - 1} nor {IGNORE_INDEX} (ignored)"
        )


class SegmentationDataset:
    """Image/mask pairs: files (decoded on demand) or arrays in memory (`images` uint8 (N, 3, S, S),
    `masks` uint8 (N, S, S)); `size` is the side training batches are formed at."""

    channels = 3

    def __init__(
        self,
        classes: Sequence[str],
        source: str,
        size: int,
        pairs: Sequence[tuple[Path, Path]] = (),
        label_map: np.ndarray | None = None,
        images: Tensor | None = None,
        masks: Tensor | None = None,
    ):
        self.classes, self.source, self.pairs = list(classes), source, list(pairs)
        self.label_map = label_map
        self.images, self.masks = images, masks
        self.size = (size, size)

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.pairs)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def read(self, index: int) -> tuple[Tensor, Tensor]:
        """The pair at its own resolution: uint8 image (3, H, W) and int64 mask (H, W), checked."""
        if self.in_memory:
            return self.images[index], self.masks[index].long()
        image_path, mask_path = self.pairs[index]
        image = np.asarray(load_image(image_path), dtype=np.uint8)
        mask = read_mask(mask_path, self.label_map)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height)"
            )
        raw = read_mask(mask_path) if self.label_map is not None else None
        check_labels(mask, len(self.classes), mask_path, raw)
        return torch.from_numpy(image.copy()).permute(2, 0, 1), torch.from_numpy(mask)

    def train_item(self, index: int) -> tuple[Tensor, Tensor]:
        """The pair letterboxed to `size` x `size` (uint8 image, uint8 mask padded with 255)."""
        if self.in_memory:
            return self.images[index], self.masks[index]
        image, mask = self.read(index)
        return letterbox(image, mask, self.size[0])

    def eval_item(self, index: int) -> tuple[Tensor, Tensor]:
        """The image at the training scale (long side `size`, aspect kept) and the mask as it is."""
        image, mask = self.read(index)
        return rescale_long_side(image, self.size[0]), mask

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.images[indices], self.masks[indices]

    def batches(self, plan: list[Tensor], workers: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Training batches of `plan` (lists of indices), decoded by `workers` processes when on files."""
        if self.in_memory:
            for indices in plan:
                yield self.get_batch(indices)
            return
        loader = torch.utils.data.DataLoader(
            _Items(self, "train"), batch_sampler=[p.tolist() for p in plan], num_workers=workers,
            collate_fn=_collate, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        for images, masks, error in guard_workers(loader, self.source):
            if error:
                raise DatasetError(error)
            yield images, masks

    def subset(self, indices: Tensor, source: str) -> SegmentationDataset:
        if self.in_memory:
            return SegmentationDataset(
                self.classes, source, self.size[0], images=self.images[indices], masks=self.masks[indices]
            )
        chosen = [self.pairs[i] for i in indices.tolist()]
        return SegmentationDataset(self.classes, source, self.size[0], chosen, self.label_map)


def rescale_long_side(image: Tensor, size: int) -> Tensor:
    """uint8 (3, H, W) resized (bilinear, aspect kept) so that its long side is `size`."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    if new == (h, w):
        return image
    x = F.interpolate(image[None].float(), size=new, mode="bilinear", align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def letterbox(image: Tensor, mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resize (image bilinear, mask nearest) so the long side is `size`; pad to a square (0 / 255)."""
    image = rescale_long_side(image, size)
    h, w = image.shape[-2:]
    if tuple(mask.shape) != (h, w):
        mask = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0]
    out_image = torch.zeros(3, size, size, dtype=torch.uint8)
    out_mask = torch.full((size, size), IGNORE_INDEX, dtype=torch.uint8)
    out_image[:, :h, :w], out_mask[:h, :w] = image, mask.to(torch.uint8)
    return out_image, out_mask


class _Items(torch.utils.data.Dataset):
    def __init__(self, dataset: SegmentationDataset, kind: str):
        self.dataset, self.kind = dataset, kind

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            item = self.dataset.train_item(index) if self.kind == "train" else self.dataset.eval_item(index)
            return *item, None
        except (DatasetError, ValueError) as err:  # BadImageError is a ValueError; workers lose the type
            return None, None, str(err)


def _collate(items: list) -> tuple[Tensor | None, Tensor | None, str | None]:
    errors = [error for _, _, error in items if error is not None]
    if errors:
        return None, None, errors[0]
    return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]), None


def _as_is(item):
    return item


def named_file(pair: tuple[Path, Path], error: str) -> str:
    """The file of an image/mask pair that `error` is about: the mask when it names the mask, else the image."""
    return str(pair[1]) if str(pair[1]) in error else str(pair[0])


def eval_items(
    dataset: SegmentationDataset, rank: int = 0, world_size: int = 1, workers: int = 0,
    skipped: list[str] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:  # fmt: skip
    """Every `world_size`-th pair from `rank` on, at evaluation scale, one at a time. An unreadable
    pair raises DatasetError naming the file, or with a `skipped` list is left out and its file appended."""
    indices = list(range(rank, len(dataset), world_size))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(_Items(dataset, "eval"), indices), batch_size=None, num_workers=workers
    )
    for index, (image, mask, error) in zip(indices, loader, strict=True):
        if error and skipped is None:
            raise DatasetError(error + SKIP_HINT)
        if error:
            skipped.append(named_file(dataset.pairs[index], error))
            continue
        yield image, mask


def check_and_load(
    dataset: SegmentationDataset, workers: int, keep: bool, skip_bad: bool = False, max_bytes: int = 2 << 30
) -> tuple[SegmentationDataset, list[str]]:
    """Decode every pair once (a bad image or mask is named now, not hours later); with `keep`, and when
    it fits in `max_bytes`, hold the letterboxed pairs in memory. With `skip_bad`, unreadable pairs are
    left out instead: returns the dataset of the good pairs and the files at fault."""
    if dataset.in_memory:
        return dataset, []
    side = dataset.size[0]
    keep = keep and len(dataset) * 4 * side * side <= max_bytes
    loader = torch.utils.data.DataLoader(
        _Items(dataset, "train"), batch_size=None, num_workers=workers, collate_fn=_as_is
    )
    images, masks, good, skipped = [], [], [], []
    for index, (image, mask, error) in enumerate(loader):
        if error and not skip_bad:
            raise DatasetError(error + SKIP_HINT)
        if error:
            skipped.append(named_file(dataset.pairs[index], error))
            continue
        good.append(index)
        if keep:
            images.append(image)
            masks.append(mask)
    if not good:
        raise DatasetError(
            f"no readable image/mask pair in {dataset.source} ({len(skipped)} skipped: {skipped[0]}, ...)"
        )
    if keep:
        images, masks = torch.stack(images), torch.stack(masks)
        return SegmentationDataset(dataset.classes, dataset.source, side, images=images, masks=masks), skipped
    return (dataset.subset(torch.tensor(good), dataset.source) if skipped else dataset), skipped


def class_names_file(root: Path) -> list[str] | None:
    """`classes.json` (a list of names) or `classes.txt` (one a line) in `root`, if there is one."""
    if (root / "classes.json").is_file():
        names = json.loads((root / "classes.json").read_text())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{root / 'classes.json'} must hold a list of class names")
        return names
    if (root / "classes.txt").is_file():
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    return None


def folder_pairs(split_dir: Path) -> list[tuple[Path, Path]]:
    """`split_dir/images/<stem>.<ext>` with `split_dir/masks/<stem>.png`; a missing mask is an error."""
    images_dir, masks_dir = split_dir / "images", split_dir / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder} does not exist (expected {split_dir}/images and {split_dir}/masks)")
    images = list_images(images_dir)  # links that lead nowhere kept: reading them names them
    if not images:
        raise DatasetError(f"{images_dir} has no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for image in images:
        mask = masks_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise DatasetError(f"image {image} has no mask: {mask} does not exist")
        pairs.append((image, mask))
    return pairs


def largest_label(pairs: Sequence[tuple[Path, Path]]) -> int:
    """The largest class label of the masks that can be read (an unreadable one is named when it is used)."""
    top = 0
    for _, mask_path in pairs:
        try:
            mask = read_mask(mask_path)
        except DatasetError:
            continue
        valid = mask[mask != IGNORE_INDEX]
        top = max(top, int(valid.max()) if valid.size else 0)
    return top


def folder_splits(root: Path, size: int) -> dict[str, SegmentationDataset]:
    """The splits of an image/mask folder (`train` and `val` needed, `test` optional)."""
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    found = {split: root / split for split in ("train", "val", "test") if (root / split).is_dir()}
    missing = [s for s in ("train", "val") if s not in found]
    if missing:
        raise DatasetError(f"{root} lacks {' and '.join(missing)} (expected {root}/{{train,val}}/images and masks)")
    pairs = {split: folder_pairs(folder) for split, folder in found.items()}
    classes = class_names_file(root)
    if classes is None:
        top = max(largest_label(p) for p in pairs.values())
        classes = [str(i) for i in range(top + 1)]
    return {split: SegmentationDataset(classes, str(root / split), size, p) for split, p in pairs.items()}


def find_segmentation_data(data: str, data_dir: str | None, size: int) -> dict[str, SegmentationDataset]:
    """The splits of `data`: a layout name with `data_dir`, or an image/mask folder."""
    name = data.lower()
    if name in LAYOUTS:
        if data_dir is None:
            raise DatasetError(f"--data {data} needs --data-dir: the folder that holds it")
        root = Path(data_dir)
        if not root.is_dir():
            raise DatasetError(f"data folder {root} does not exist")
        layout = LAYOUTS[name]
        classes = class_names_file(root) or layout.classes
        splits = {}
        for split in ("train", "val"):
            pairs = layout.pairs(root, split)
            if not pairs:
                raise DatasetError(f"{root} has no {split} images in the {name} layout")
            splits[split] = SegmentationDataset(classes, f"{root} ({split})", size, pairs, layout.label_map)
        return splits
    return folder_splits(Path(data), size)
