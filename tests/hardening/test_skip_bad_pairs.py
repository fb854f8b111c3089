"""--skip-bad-images for segmentation (train, eval, predict) and image-to-sequence models (train, predict):
the bad-file corpus (tests/hardening/corpus.py) among good image/mask pairs and strips, plus a bad mask of
every kind. Without the option the first bad file stops the command with its name and the option to
pass; with it every bad file is left out, counted in the summary and named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.hardening.corpus import bad_masks, deny_reading_as_root, grey, write_corpus
from tests.segmentation import toy
from tests.segmentation.data import train_args, write_folder
from tests.seq2seq.test_train import TINY_STRIPS
from vitlab.cli import main
from vitlab.registry import create_model
from vitlab.train.rundir import RunDir

HEIGHT, WIDTH = 20, 28  # the good pairs' size (write_folder)


@pytest.fixture(scope="module")
def registered():
    with toy.registered() as name:
        yield name


@pytest.fixture
def seg_corpus(tmp_path, monkeypatch):
    """An image/mask folder whose train split holds, besides 4 good pairs, every bad image of the corpus
    (each with a good mask) and a good image with each kind of bad mask; the val split one bad mask.
    Returns the folder and the files at fault, by split."""
    root = write_folder(tmp_path / "data", train=4, val=2, size=(HEIGHT, WIDTH))
    images, masks = root / "train" / "images", root / "train" / "masks"
    bad = {"train": [str(images / name) for name in write_corpus(images)]}
    deny_reading_as_root(monkeypatch, images / "unreadable.jpg")
    for name in {p.split("/")[-1].rsplit(".", 1)[0] for p in bad["train"]}:
        grey(np.zeros((HEIGHT, WIDTH))).save(masks / f"{name}.png")
    picture = Image.fromarray(np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8))
    for i, (write, _) in enumerate(bad_masks(HEIGHT, WIDTH, classes=4).values()):
        picture.save(images / f"mask-{i}.png")
        write(masks / f"mask-{i}.png")
        bad["train"].append(str(masks / f"mask-{i}.png"))
    bad_masks(HEIGHT, WIDTH, classes=4)["truncated"][0](root / "val" / "masks" / "001.png")
    bad["val"] = [str(root / "val" / "masks" / "001.png")]
    return root, bad


def test_training_names_the_first_bad_pair_or_skips_and_counts_every_one(registered, seg_corpus, tmp_path, capsys):
    root, bad = seg_corpus
    args = train_args(root, tmp_path / "run", epochs=1)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--skip-bad-images" in err
    assert any(f"{path}:" in err or f"{path} " in err for path in bad["train"]), err
    assert main([*args, "--skip-bad-images", "--no-check-images"]) == 0  # skipping runs the check regardless
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    skipped = bad["train"] + bad["val"]
    assert len(skipped) == 21 and summary["skipped_images"] == 21
    assert sorted(summary["skipped_files"]) == sorted(skipped)
    assert summary["train_images"] == 4 and summary["val_images"] == 1


@pytest.fixture
def seg_checkpoint(registered, tmp_path):
    torch.manual_seed(0)
    args = {"num_classes": 4, "img_size": 24}
    RunDir(tmp_path / "weights").write_weights(
        create_model(registered, **args).state_dict(), ["background", "red", "blue", "green"], registered, args
    )
    return str(tmp_path / "weights" / "model.safetensors")


def test_eval_names_the_first_bad_pair_or_skips_and_counts_every_one(seg_corpus, seg_checkpoint, capsys):
    root, bad = seg_corpus
    args = ["eval", "--checkpoint", seg_checkpoint, "--data", str(root), "--split", "train", "--workers", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--skip-bad-images" in err and any(path in err for path in bad["train"]), err
    assert main([*args, "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "(train, 4 images)" in out and "skipped 20 unreadable image/mask pairs" in out, out


def test_predict_names_a_bad_image_or_skips_and_counts_them(seg_corpus, seg_checkpoint, tmp_path, capsys):
    root, bad = seg_corpus
    images = root / "train" / "images"
    args = ["predict", "--checkpoint", seg_checkpoint, "--output", str(tmp_path / "out")]
    assert main([*args, str(images / "000.png"), str(images / "truncated.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {images / 'truncated.png'}: ") and "--skip-bad-images" in err
    assert main([*args, "--skip-bad-images", str(images)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("  mask: ") == 4 + 5  # the good pairs' images and those of the bad masks
    assert "segmented 9 images, skipped 15 unreadable (first: " in captured.err, captured.err


def test_sequence_models_skip_bad_strips_in_predict_and_bad_images_in_training(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    args = {**TINY_STRIPS, "patch_size": 7, "img_size": 28, "num_classes": 10}
    model = create_model("image_to_sequence_vit", **args)
    RunDir(tmp_path).write_weights(model.state_dict(), [f"c{i}" for i in range(10)], "image_to_sequence_vit", args)
    strips = tmp_path / "strips"
    expected = write_corpus(strips)
    deny_reading_as_root(monkeypatch, strips / "unreadable.jpg")
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (28, 84), dtype=np.uint8)).save(strips / f"{i}.png")
    command = ["predict", "--checkpoint", str(tmp_path / "model.safetensors"), str(strips)]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {strips}/") and "--skip-bad-images" in err
    assert main([*command, "--skip-bad-images"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count(": c") == 2 and f"read 2 strips, skipped {len(expected)} unreadable" in captured.err

    data = tmp_path / "folder"  # strips of images from a class folder holding the corpus
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(
                data / label / f"{i}.png"
            )
    write_corpus(data / "a")
    deny_reading_as_root(monkeypatch, data / "a" / "unreadable.jpg")
    train = ["--threads", "1", "train", "--model", "image_to_sequence_vit", "--data", str(data), "--img-size", "8",
             "--model-args", json.dumps({**TINY_STRIPS, "in_chans": 3}), "--epochs", "1", "--batch-size", "4",
             "--strips", "8", "--strip-min", "2", "--strip-max", "4", "--workers", "0", "--progress", "off",
             "--val-fraction", "0.25", "--output", str(tmp_path / "run")]  # fmt: skip
    assert main(train) == 2
    assert "--skip-bad-images" in capsys.readouterr().err
    assert main([*train, "--skip-bad-images"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_images"] == len(expected)
