"""The published layouts of ADE20K, Pascal VOC 2012 and Cityscapes: class names, where the image/mask
pairs are, and how a mask's raw values map to labels (mmsegmentation's conventions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitlab.data.arrays import DatasetError

ADE20K_CLASSES = (  # noqa: SIM905 (a sentence of names reads better than 150 lines)
    "wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet, sidewalk, person, earth, "
    "door, table, mountain, plant, curtain, chair, car, water, painting, sofa, shelf, house, sea, mirror, rug, "
    "field, armchair, seat, fence, desk, rock, wardrobe, lamp, bathtub, railing, cushion, base, box, column, "
    "signboard, chest of drawers, counter, sand, sink, skyscraper, fireplace, refrigerator, grandstand, path, "
    "stairs, runway, case, pool table, pillow, screen door, stairway, river, bridge, bookcase, blind, "
    "coffee table, toilet, flower, book, hill, bench, countertop, stove, palm, kitchen island, computer, "
    "swivel chair, boat, bar, arcade machine, hovel, bus, towel, light, truck, tower, chandelier, awning, "
    "streetlight, booth, television receiver, airplane, dirt track, apparel, pole, land, bannister, escalator, "
    "ottoman, bottle, buffet, poster, stage, van, ship, fountain, conveyer belt, canopy, washer, plaything, "
    "swimming pool, stool, barrel, basket, waterfall, tent, bag, minibike, cradle, oven, ball, food, step, tank, "
    "trade name, microwave, pot, animal, bicycle, lake, dishwasher, screen, blanket, sculpture, hood, sconce, "
    "vase, traffic light, tray, ashcan, fan, pier, crt screen, plate, monitor, bulletin board, shower, radiator, "
    "glass, clock, flag"
).split(", ")
VOC_CLASSES = (  # noqa: SIM905
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()
CITYSCAPES_CLASSES = (  # noqa: SIM905
    "road, sidewalk, building, wall, fence, pole, traffic light, traffic sign, vegetation, terrain, sky, person, "
    "rider, car, truck, bus, train, motorcycle, bicycle"
).split(", ")
# Cityscapes label ids (labelIds PNGs, 0..33) of the 19 evaluated classes, in train-id order.
CITYSCAPES_TRAIN_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def reduce_zero_label_map() -> np.ndarray:
    """ADE20K: 0 ("other") -> 255, k -> k - 1, 255 stays 255 (mmseg's reduce_zero_label)."""
    table = np.arange(256, dtype=np.int64) - 1
    table[0] = table[255] = 255
    return table


def cityscapes_map() -> np.ndarray:
    """labelIds -> train ids; the other ids of 0..33 -> 255; values above 33 are invalid (-1)."""
    table = np.full(256, -1, dtype=np.int64)
    table[:34] = 255
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_IDS):
        table[label_id] = train_id
    table[255] = 255
    return table


def ade_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = "training" if split == "train" else "validation"
    images_dir, masks_dir = root / "images" / folder, root / "annotations" / folder
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} does not exist (ADE20K layout: images/{{training,validation}})")
    return [(p, masks_dir / f"{p.stem}.png") for p in sorted(images_dir.glob("*.jpg"))]


def voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if candidate.is_dir():
            root = candidate
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"{listing} does not exist (Pascal VOC layout: ImageSets/Segmentation/{split}.txt)")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]


def cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images_dir = root / "leftImg8bit" / split
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} does not exist (Cityscapes layout: leftImg8bit/{split}/<city>)")
    pairs = []
    for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        pairs.append((image, root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"))
    return pairs


@dataclass(frozen=True)
class Layout:
    classes: list[str]
    pairs: Callable[[Path, str], list[tuple[Path, Path]]]
    label_map: np.ndarray | None


LAYOUTS = {
    "ade20k": Layout(ADE20K_CLASSES, ade_pairs, reduce_zero_label_map()),
    "voc": Layout(VOC_CLASSES, voc_pairs, None),
    "cityscapes": Layout(CITYSCAPES_CLASSES, cityscapes_pairs, cityscapes_map()),
}
