"""The bad-file corpus for the array formats and for masks: IDX (MNIST) and CIFAR binaries with wrong
magic numbers or lengths, and masks with out-of-range labels, the wrong size, colours, or no image
at all. Each is refused by `build_datasets` / the segmentation check with a message naming the file."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.hardening.corpus import bad_masks
from tests.train.tiny import idx_bytes, write_mnist
from vitlab.data.datasets import DatasetError, build_datasets
from vitlab.data.segmentation import check_and_load, find_segmentation_data

IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"


def idx_faults(good_images: bytes, good_labels: bytes) -> dict[str, tuple[str, bytes, str]]:
    """fault -> (file replaced, its new bytes, what the error says)."""
    labels = np.frombuffer(good_labels[8:], dtype=np.uint8).copy()
    labels[5] = 200
    return {
        "magic": (IMAGES, b"\x12\x34" + good_images[2:], "bad magic number 1234"),
        "type byte": (IMAGES, good_images[:2] + b"\x07" + good_images[3:], "is not an IDX file"),
        "short header": (IMAGES, good_images[:9], "the header needs 16 bytes"),
        "truncated data": (IMAGES, good_images[:-7], "is truncated or corrupt"),
        "extra bytes": (IMAGES, good_images + b"\x00" * 3, "is truncated or corrupt"),
        "empty": (LABELS, b"", "is not an IDX file"),
        "bad gzip": (LABELS, b"\x1f\x8b" + b"\x00" * 20, "is not a readable gzip file"),
        "label out of range": (LABELS, idx_bytes(labels), "label 200 of item 5 is out of range"),
        "count mismatch": (LABELS, idx_bytes(labels[:-1] % 10), "labels"),
    }


def test_idx_files_with_wrong_magic_or_length_are_named(tmp_path):
    good = write_mnist(tmp_path / "good")
    faults = idx_faults((good / IMAGES).read_bytes(), (good / LABELS).read_bytes())
    for fault, (name, data, says) in faults.items():
        root = tmp_path / fault.replace(" ", "-")
        shutil.copytree(good, root)
        (root / name).write_bytes(data)
        with pytest.raises(DatasetError) as caught:
            build_datasets("mnist", str(root), folder_size=8)
        assert str(root) in str(caught.value) and says in str(caught.value), (fault, str(caught.value))


def cifar_record(label: int) -> bytes:
    return bytes([label]) + bytes(3 * 32 * 32)


@pytest.mark.parametrize(
    ("fault", "says"),
    [("short", "is not a multiple of the 3073-byte record"), ("empty", "0 bytes"), ("label", "label 10 of item 1"),
     ("missing", "does not exist"), ("gzipped", "is not a multiple")],
)  # fmt: skip
def test_cifar_files_with_wrong_lengths_or_labels_are_named(tmp_path, fault, says):
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (root / name).write_bytes(cifar_record(1) * 2)
    bad = root / "data_batch_3.bin"
    if fault == "short":
        bad.write_bytes(cifar_record(1) * 2 + b"\x00" * 100)
    elif fault == "empty":
        bad.write_bytes(b"")
    elif fault == "label":
        bad.write_bytes(cifar_record(1) + cifar_record(10))
    elif fault == "missing":
        bad.unlink()
    else:
        bad.write_bytes(gzip.compress(cifar_record(1) * 2))
    with pytest.raises(DatasetError) as caught:
        build_datasets("cifar10", str(tmp_path), folder_size=8)
    assert str(bad) in str(caught.value) and says in str(caught.value), str(caught.value)


def test_bad_masks_are_named(tmp_path):
    good = tmp_path / "good"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (good / split / "images").mkdir(parents=True)
        (good / split / "masks").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(
                good / split / "images" / f"{i}.png"
            )
            Image.fromarray(rng.integers(0, 3, (12, 16), dtype=np.uint8), mode="L").save(
                good / split / "masks" / f"{i}.png"
            )
    (good / "classes.txt").write_text("a\nb\nc\n")
    for fault, (write, says) in bad_masks(12, 16, classes=3).items():
        root = tmp_path / fault.replace(" ", "-")
        shutil.copytree(good, root)
        bad = root / "train" / "masks" / "0.png"
        write(bad)
        with pytest.raises(DatasetError) as caught:
            splits = find_segmentation_data(str(root), None, 16)
            check_and_load(splits["train"], workers=0, keep=True)
        assert str(bad) in str(caught.value) and says in str(caught.value), (fault, str(caught.value))
