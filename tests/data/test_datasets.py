"""Each dataset format on small files made here, and every bad-data error."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.train.tiny import idx_bytes, write_mnist
from vitlab.data.datasets import (
    ArrayDataset,
    DatasetError,
    build_datasets,
    demo_dataset,
    materialize,
    read_idx,
    split_indices,
)
from vitlab.data.images import BadImageError
from vitlab.data.loader import epoch_order, local_indices


@pytest.mark.parametrize("gz", [False, True])
def test_idx_raw_and_gzipped(tmp_path, gz):
    write_mnist(tmp_path, train=20, test=8, size=8, classes=4, gz=gz)
    data = build_datasets("mnist", str(tmp_path), folder_size=1)
    assert isinstance(data.train, ArrayDataset)
    assert data.train.images.shape == (20, 1, 8, 8) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (8, 1, 8, 8)
    assert data.train.labels.tolist() == [i % 4 for i in range(20)]
    assert data.classes == [str(i) for i in range(10)]
    fashion = build_datasets("fashion-mnist", str(tmp_path), folder_size=1)
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"


def test_idx_of_other_types_and_shapes(tmp_path):
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    header = bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    (tmp_path / "x.idx").write_bytes(header + values.tobytes())
    assert read_idx(tmp_path / "x.idx").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_idx_truncated_bad_magic_and_bad_gzip(tmp_path):
    data = idx_bytes(np.zeros((4, 8, 8), np.uint8))
    (tmp_path / "short").write_bytes(data[:-5])
    with pytest.raises(DatasetError, match=r"short is truncated.*\(4, 8, 8\)"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DatasetError, match=r"magic is not an IDX file \(bad magic number 1234"):
        read_idx(tmp_path / "magic")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(data)[:30])
    with pytest.raises(DatasetError, match="broken.gz"):
        read_idx(tmp_path / "broken.gz")


def test_idx_labels_out_of_range_and_count_mismatch(tmp_path):
    write_mnist(tmp_path, train=12, test=4)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 12, 3], np.uint8)))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: label 12 of item 2 is out of range for 10"):
        build_datasets("mnist", str(tmp_path), folder_size=1)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 2], np.uint8)))
    with pytest.raises(DatasetError, match="has 4 images but .* has 3 labels"):
        build_datasets("mnist", str(tmp_path), folder_size=1)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DatasetError, match="lacks train-images-idx3-ubyte"):
        build_datasets("mnist", str(tmp_path), folder_size=1)
    with pytest.raises(DatasetError, match="needs --data-dir"):
        build_datasets("cifar10", None, folder_size=1)
    with pytest.raises(DatasetError, match=r"data folder .*nowhere does not exist"):
        build_datasets("cifar10", str(tmp_path / "nowhere"), folder_size=1)


def _cifar_records(count, label_bytes, labels, rng):
    rows = []
    for i in range(count):
        image = rng.integers(0, 256, 3 * 32 * 32, dtype=np.uint8)
        rows.append(np.concatenate([np.array(labels[i], np.uint8), image]))
    return np.stack(rows).tobytes()


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}.bin").write_bytes(_cifar_records(3, 1, [[j % 10] for j in range(3)], rng))
    test = _cifar_records(4, 1, [[9], [8], [7], [6]], rng)
    (root / "test_batch.bin").write_bytes(test)
    (root / "batches.meta.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n\n")
    data = build_datasets("cifar10", str(tmp_path), folder_size=1)  # the parent of the extracted folder works
    assert data.train.images.shape == (15, 3, 32, 32) and data.test.labels.tolist() == [9, 8, 7, 6]
    assert data.classes[3] == "name3"
    first = np.frombuffer(test, np.uint8)[1 : 1 + 3072].reshape(3, 32, 32)
    assert torch.equal(data.test.images[0], torch.from_numpy(first.copy()))  # channel-major records
    (root / "test_batch.bin").write_bytes(test[:-10])
    with pytest.raises(DatasetError, match="test_batch.bin is truncated"):
        build_datasets("cifar10", str(root), folder_size=1)
    (root / "test_batch.bin").write_bytes(_cifar_records(1, 1, [[10]], rng))
    with pytest.raises(DatasetError, match="label 10 of item 0 is out of range for 10 classes"):
        build_datasets("cifar10", str(root), folder_size=1)


def test_cifar100_binary_uses_the_fine_label(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-100-binary"
    root.mkdir()
    (root / "train.bin").write_bytes(_cifar_records(3, 2, [[1, 50], [2, 99], [3, 0]], rng))
    (root / "test.bin").write_bytes(_cifar_records(1, 2, [[19, 42]], rng))
    data = build_datasets("cifar100", str(root), folder_size=1)
    assert data.train.labels.tolist() == [50, 99, 0] and data.test.labels.tolist() == [42]
    assert len(data.classes) == 100


def _save(path, mode, rng, size=(12, 9)):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16)).save(path)
        return
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode).save(path)


def test_image_folders_any_mode_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, mode in (("cat", "L"), ("dog", "RGBA"), ("eel", "P"), ("fox", "I;16")):
            for i in range(2):
                _save(tmp_path / split / cls / f"{i}.png", mode, rng)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    data = build_datasets(str(tmp_path), None, folder_size=8)
    assert data.classes == ["cat", "dog", "eel", "fox"] and len(data.train) == 8 and data.test is data.val
    checked, bad = materialize(data.train, workers=0, skip_bad=False)
    assert bad == [] and isinstance(checked, ArrayDataset)
    assert checked.images.shape == (8, 3, 8, 8) and checked.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_single_folder_is_split_reproducibly(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(10):
            _save(tmp_path / cls / f"{i}.jpg", "RGB", rng)
    first = build_datasets(str(tmp_path), None, folder_size=8, val_fraction=0.2)
    again = build_datasets(str(tmp_path), None, folder_size=8, val_fraction=0.2)
    assert first.val.files == again.val.files and len(first.val) == 4 and len(first.train) == 16
    assert sorted(first.val.labels.tolist()) == [0, 0, 1, 1]
    assert not set(first.val.files) & set(first.train.files)
    train, val = split_indices([0] * 5 + [1] * 5, 0.4, seed=1)
    assert len(val) == 4 and sorted(train + val) == list(range(10))


def test_bad_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        build_datasets(str(tmp_path / "missing"), None, folder_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty has no class folders"):
        build_datasets(str(tmp_path / "empty"), None, folder_size=8)
    rng = np.random.default_rng(0)
    _save(tmp_path / "d" / "train" / "cat" / "0.png", "RGB", rng)
    (tmp_path / "d" / "train" / "dog").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"class folder .*train/dog has no images"):
        build_datasets(str(tmp_path / "d"), None, folder_size=8)
    _save(tmp_path / "d" / "train" / "dog" / "0.png", "RGB", rng)
    _save(tmp_path / "d" / "val" / "owl" / "0.png", "RGB", rng)
    with pytest.raises(DatasetError, match="class folders that are not among the classes: owl"):
        build_datasets(str(tmp_path / "d"), None, folder_size=8)


def test_truncated_image_is_named_or_skipped(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _save(tmp_path / "train" / "cat" / f"{i}.jpg", "RGB", rng, size=(40, 40))
    broken = tmp_path / "train" / "cat" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    dataset = build_datasets(str(tmp_path), None, folder_size=8).train
    with pytest.raises(BadImageError, match=r"cat/1.jpg.*--skip-bad-images"):
        materialize(dataset, workers=0, skip_bad=False)
    checked, bad = materialize(dataset, workers=0, skip_bad=True)
    assert bad == [str(broken)] and len(checked) == len(dataset) - 1


def test_the_demo_dataset_is_real_and_balanced():
    train, test = demo_dataset("train"), demo_dataset("test")
    assert train.images.shape == (3000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [300] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert train.classes[7] == "Sneaker"
    assert 50 < train.images.float().mean() < 120  # real garments on black, not noise


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(50, 3, 7), epoch_order(50, 3, 7))
    assert not torch.equal(epoch_order(50, 3, 7), epoch_order(50, 3, 8))
    assert sorted(epoch_order(50, 3, 7).tolist()) == list(range(50))
    repeated = epoch_order(12, 0, 0, repeats=3)
    assert len(repeated) == 12 and (repeated.view(4, 3) == repeated.view(4, 3)[:, :1]).all()
    batch = torch.arange(8)
    shards = [local_indices(batch, r, 2, 1, 0) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(8))
    assert torch.equal(local_indices(batch, 1, 2, 2, 1), torch.tensor([5, 7]))


def test_holdout_validates_on_part_of_the_training_split_and_keeps_the_test_split():
    plain = build_datasets("demo", None, folder_size=8)
    data = build_datasets("demo", None, folder_size=8, holdout=0.1)
    again = build_datasets("demo", None, folder_size=8, holdout=0.1)
    assert plain.val is plain.test and data.val is not data.test
    assert torch.equal(data.test.images, plain.test.images)
    assert len(data.train) + len(data.val) == len(plain.train) == 3000 and len(data.val) == 300
    assert torch.bincount(data.val.labels).tolist() == [30] * 10  # the same share of every class
    assert torch.equal(data.val.images, again.val.images)  # always the same images, whatever the seed
    joined = torch.cat([data.train.images, data.val.images]).flatten(1)
    assert len(torch.unique(joined, dim=0)) == len(torch.unique(plain.train.images.flatten(1), dim=0))
    assert "300 of the 3000 training images validate" in data.notes[0]
    with pytest.raises(DatasetError, match="holdout must be in"):
        build_datasets("demo", None, folder_size=8, holdout=1.0)
    with pytest.raises(DatasetError, match="val folder or --val-fraction"):
        build_datasets(str(Path(__file__).parent), None, folder_size=8, holdout=0.1)


def test_balanced_subset_takes_classes_in_turn_and_follows_the_seed():
    from vitlab.data.folders import balanced_subset

    labels = [0] * 50 + [1] * 30 + [2] * 3 + [3] * 17
    chosen = balanced_subset(labels, 25, seed=0)
    counts = [sum(labels[i] == c for i in chosen) for c in range(4)]
    assert len(set(chosen)) == 25 and sorted(counts) == [3, 7, 7, 8]  # class 2 runs out at 3; the rest share 22
    assert balanced_subset(labels, 25, seed=0) == chosen
    assert balanced_subset(labels, 25, seed=1) != chosen
    assert sorted(balanced_subset(labels, 100, seed=0)) == list(range(100))
    with pytest.raises(DatasetError, match="cannot take 101 of 100"):
        balanced_subset(labels, 101, seed=0)
