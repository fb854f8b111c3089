"""Segmentation data: the layouts, palette and grayscale masks, the label maps of ADE20K and Cityscapes,
every bad input named with its file and value, and the built-in demo data."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.segmentation.data import save_mask, write_folder
from vitlab.data.arrays import DatasetError
from vitlab.data.seg_layouts import CITYSCAPES_CLASSES
from vitlab.data.segmentation import check_and_load, find_segmentation_data, letterbox, read_mask


def write_pair(folder, stem, image, mask, kind="palette"):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(
        folder / "images" / f"{stem}.jpg" if stem.startswith("j") else folder / "images" / f"{stem}.png"
    )
    save_mask(mask, folder / "masks" / f"{stem}.png", kind)


def test_a_folder_with_palette_and_grayscale_masks(tmp_path):
    root = write_folder(tmp_path / "d", train=4, val=2, size=(10, 14))
    splits = find_segmentation_data(str(root), None, 16)
    assert set(splits) == {"train", "val"} and splits["train"].classes == ["background", "red", "blue", "green"]
    for index in (0, 1):  # a grayscale mask, then a palette one: both read as their indices
        image, mask = splits["train"].read(index)
        stored = np.asarray(Image.open(root / "train" / "masks" / f"{index:03d}.png"))
        assert image.shape == (3, 10, 14) and torch.equal(mask, torch.from_numpy(stored.astype(np.int64)))
    assert Image.open(root / "train" / "masks" / "001.png").mode == "P"


def test_class_names_default_to_the_largest_label(tmp_path):
    root = write_folder(tmp_path / "d", train=3, val=2, names=False)
    assert find_segmentation_data(str(root), None, 16)["val"].classes == ["0", "1", "2", "3"]
    (root / "classes.txt").write_text("bg\nred\nblue\ngreen\nextra\n")
    assert find_segmentation_data(str(root), None, 16)["val"].classes[-1] == "extra"


def test_letterbox_keeps_the_aspect_and_pads_with_ignore(tmp_path):
    image = torch.arange(3 * 10 * 20, dtype=torch.uint8).reshape(3, 10, 20)
    mask = torch.zeros(10, 20, dtype=torch.long)
    mask[:, 10:] = 2
    out_image, out_mask = letterbox(image, mask, 8)
    assert out_image.shape == (3, 8, 8) and (out_mask[4:] == 255).all() and (out_image[:, 4:] == 0).all()
    assert out_mask[:4, :4].eq(0).all() and out_mask[:4, 4:].eq(2).all()  # nearest: labels stay labels


def test_bad_masks_are_named_with_the_file_and_value(tmp_path):
    good_image = np.zeros((6, 8, 3), np.uint8)
    cases = {
        "size": (np.zeros((6, 9), np.uint8), "is 9x6 but its image"),
        "label": (np.full((6, 8), 7, np.uint8), "holds the label 7"),
    }
    for name, (mask, message) in cases.items():
        root = write_folder(tmp_path / name, train=2, val=2)
        write_pair(root / "train", "bad", good_image, mask)
        with pytest.raises(DatasetError, match=message) as err:
            check_and_load(find_segmentation_data(str(root), None, 8)["train"], 0, keep=True)
        assert "bad.png" in str(err.value)
    root = write_folder(tmp_path / "rgb", train=2, val=2)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "val" / "masks" / "000.png")
    with pytest.raises(DatasetError, match=r"000.png is an RGB image; a mask must be a palette or grayscale"):
        find_segmentation_data(str(root), None, 8)["val"].read(0)


def test_missing_masks_and_empty_folders_are_named(tmp_path):
    root = write_folder(tmp_path / "d", train=2, val=2)
    (root / "train" / "masks" / "001.png").unlink()
    with pytest.raises(DatasetError, match=r"train/images/001.png has no mask: .*001.png does not exist"):
        find_segmentation_data(str(root), None, 8)
    empty = tmp_path / "empty"
    for split in ("train", "val"):
        (empty / split / "images").mkdir(parents=True)
        (empty / split / "masks").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"empty/train/images has no images"):
        find_segmentation_data(str(empty), None, 8)
    with pytest.raises(DatasetError, match="lacks train and val"):
        find_segmentation_data(str(tmp_path), None, 8)


def test_ade20k_layout_reduces_the_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150], [2, 255, 0]], np.uint8)
    for folder in ("training", "validation"):
        (root / "images" / folder).mkdir(parents=True)
        (root / "annotations" / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / folder / "ADE_1.jpg")
        Image.fromarray(raw, mode="L").save(root / "annotations" / folder / "ADE_1.png")
    splits = find_segmentation_data("ade20k", str(tmp_path), 8)  # the parent of ADEChallengeData2016 works too
    assert len(splits["train"].classes) == 150
    _, mask = splits["val"].read(0)
    assert mask.tolist() == [[255, 0, 149], [1, 255, 255]]  # 0 ("other") and 255 ignored, k -> k - 1
    Image.fromarray(np.full((2, 3), 151, np.uint8), mode="L").save(root / "annotations" / "training" / "ADE_1.png")
    with pytest.raises(DatasetError, match="holds the label 151"):
        splits["train"].read(0)


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    raw = np.array([[7, 8, 26], [33, 0, 6]], np.uint8)  # road, sidewalk, car, bicycle, unlabeled, ground
    for split in ("train", "val"):
        (tmp_path / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        (tmp_path / "gtFine" / split / "aachen").mkdir(parents=True)
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(
            tmp_path / f"leftImg8bit/{split}/aachen/a_1_leftImg8bit.png"
        )
        Image.fromarray(raw, mode="L").save(tmp_path / f"gtFine/{split}/aachen/a_1_gtFine_labelIds.png")
    splits = find_segmentation_data("cityscapes", str(tmp_path), 8)
    assert splits["val"].classes == CITYSCAPES_CLASSES and len(CITYSCAPES_CLASSES) == 19
    assert splits["val"].read(0)[1].tolist() == [[0, 1, 13], [18, 255, 255]]
    Image.fromarray(np.full((2, 3), 40, np.uint8), mode="L").save(
        tmp_path / "gtFine/val/aachen/a_1_gtFine_labelIds.png"
    )
    with pytest.raises(DatasetError, match="a_1_gtFine_labelIds.png holds the label 40"):
        splits["val"].read(0)


def test_voc_layout_reads_palette_indices_and_keeps_the_border(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "JPEGImages" / "2007_000032.jpg")
    save_mask(np.array([[0, 15], [255, 20]], np.uint8), root / "SegmentationClass" / "2007_000032.png")
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("2007_000032\n")
    splits = find_segmentation_data("voc", str(tmp_path), 8)
    assert splits["train"].classes[15] == "person" and len(splits["train"].classes) == 21
    assert splits["val"].read(0)[1].tolist() == [[0, 15], [255, 20]]


def test_read_mask_of_sixteen_bit_values(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[1, 300]], np.uint16)).save(path)
    with pytest.raises(DatasetError, match="holds the value 300"):
        read_mask(path)


def test_the_demo_is_deterministic_and_its_masks_are_the_garments():
    from vitlab.data.datasets import demo_dataset
    from vitlab.data.seg_demo import GARMENT_THRESHOLD, compose, demo_segmentation, texture

    g = torch.Generator().manual_seed(5)
    garments, labels = demo_dataset("test").images[:, 0][:1], torch.tensor([3])  # one garment: a "Dress"
    image, mask = compose(garments, labels, g)
    g = torch.Generator().manual_seed(5)
    background = (texture(g) * 255).round().to(torch.uint8)
    assert set(mask.unique().tolist()) <= {0, 4} and (mask == 4).any()
    assert torch.equal(image[:, mask == 0], background[:, mask == 0])  # background pixels are the texture's
    changed = (image != background).any(dim=0)
    assert changed[mask == 4].float().mean() > 0.95  # the pixels labelled as the garment show the garment
    area = (garments[0] >= GARMENT_THRESHOLD).sum() * (24 / 28) ** 2  # at least one paste at the smallest size
    assert (mask == 4).sum() >= 0.8 * area
    val = demo_segmentation("val")
    again = demo_segmentation("val")
    assert torch.equal(val.images, again.images) and torch.equal(val.masks, again.masks)
    assert val.classes[0] == "background" and len(val.classes) == 11 and val.images.shape[1:] == (3, 64, 64)
    assert set(val.masks.unique().tolist()) == set(range(11))
    assert json.dumps(val.classes)
