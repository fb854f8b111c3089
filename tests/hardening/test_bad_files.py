"""The bad-file corpus (tests/hardening/corpus.py) through every path that reads images: decoding,
the check before training, `vitlab eval` and `vitlab predict`. Each bad file is refused with a
message naming it (and the reason); with --skip-bad-images each is left out and counted.
Then the files that are odd but good: CMYK, 16-bit, EXIF-rotated, read as a viewer shows them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import vitlab
from tests.hardening.corpus import cmyk_jpeg, deny_reading_as_root, encoded, exif_rotated_jpeg, picture, write_corpus
from vitlab.cli import main
from vitlab.data.datasets import build_datasets, materialize
from vitlab.data.images import BadImageError, load_image
from vitlab.data.transforms import stream_files


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A class folder `data/bad/` of bad files next to `data/good/` of readable ones."""
    root = tmp_path / "data"
    expected = write_corpus(root / "bad")
    deny_reading_as_root(monkeypatch, root / "bad" / "unreadable.jpg")
    (root / "good").mkdir()
    for i in range(3):
        picture(seed=i).save(root / "good" / f"{i}.png")
        (root / "bad" / f"fine{i}.jpg").write_bytes(encoded(picture(seed=10 + i), "JPEG"))
    return root, expected


def test_every_bad_file_is_refused_by_name_with_its_reason(corpus):
    root, expected = corpus
    assert len(expected) >= 15
    for name, says in expected.items():
        with pytest.raises(BadImageError) as caught:
            load_image(root / "bad" / name)
        message = str(caught.value)
        assert str(root / "bad" / name) in message and says in message, message


def test_the_check_before_training_names_the_first_and_skips_them_all(corpus):
    root, expected = corpus
    data = build_datasets(str(root), None, folder_size=8, val_fraction=0.2)
    listed = {p.name for p in data.train.files + data.val.files}
    assert set(expected) <= listed  # links that lead nowhere are listed, not silently dropped
    with pytest.raises(BadImageError, match=r"/bad/.*--skip-bad-images"):
        materialize(data.train, workers=0, skip_bad=False)
    skipped = []
    for split in (data.train, data.val):
        checked, bad = materialize(split, workers=0, skip_bad=True)
        skipped += bad
        assert len(checked) == len(split) - len(bad)
    assert sorted(p.rsplit("/", 1)[-1] for p in skipped) == sorted(expected)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = vitlab.create_model("deit_tiny_patch16_224", num_classes=2, img_size=32, embed_dim=16, depth=1,
                                num_heads=2)  # fmt: skip
    path = tmp_path / "model.safetensors"
    args = '{"num_classes": 2, "img_size": 32, "embed_dim": 16, "depth": 1, "num_heads": 2}'
    save_file(model.state_dict(), path, metadata={"class_names": '["bad", "good"]',
              "vitlab_model": "deit_tiny_patch16_224", "vitlab_model_args": args})  # fmt: skip
    return path


def test_eval_names_a_bad_file_or_skips_and_counts_them(corpus, checkpoint, capsys):
    root, expected = corpus
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(root), "--workers", "0", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read image ") and "/bad/" in err and "--skip-bad-images" in err
    assert main([*args, "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "(all, 6 images)" in out and f"skipped {len(expected)} unreadable images" in out


def test_predict_names_each_bad_file_or_skips_and_counts_them(corpus, checkpoint, capsys):
    root, expected = corpus
    for name, says in expected.items():  # the batches predict streams
        with pytest.raises(BadImageError) as caught:
            list(stream_files([root / "good" / "0.png", root / "bad" / name], 16, (0.5,) * 3, (0.5,) * 3))
        assert f"cannot read image {root / 'bad' / name}: " in str(caught.value) and says in str(caught.value)
    assert main(["predict", "--checkpoint", str(checkpoint), str(root / "bad" / "bomb.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {root / 'bad' / 'bomb.png'}: 10000x10000") and "limit" in err
    assert main(["predict", "--checkpoint", str(checkpoint), "--skip-bad-images", "--batch-size", "4", str(root)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("1. ") == 6  # the three good pictures and the three fine JPEGs
    assert "predicted 6 images" in captured.err and f"skipped {len(expected)} unreadable" in captured.err


def test_cmyk_jpegs_become_the_rgb_they_print_as(tmp_path):
    for cmyk, rgb in [((0, 0, 0, 0), (255, 255, 255)), ((255, 0, 0, 0), (0, 255, 255)), ((0, 0, 0, 255), (0, 0, 0))]:
        path = tmp_path / "cmyk.jpg"
        path.write_bytes(cmyk_jpeg(cmyk))
        with Image.open(path) as raw:
            assert raw.mode == "CMYK"
        pixels = np.asarray(load_image(path)).astype(int)
        assert np.abs(pixels - rgb).max() <= 2, (cmyk, pixels[0, 0])


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    pixels = np.asarray(load_image(path))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255] and (pixels == pixels[..., :1]).all()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_rotated_photos_are_read_as_a_viewer_shows_them(tmp_path, orientation):
    data, shown = exif_rotated_jpeg(orientation)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    pixels = np.asarray(load_image(path)).astype(int)
    assert pixels.shape == shown.shape
    assert np.abs(pixels - shown).mean() < 4  # JPEG rounding only: the corners are where a viewer puts them
