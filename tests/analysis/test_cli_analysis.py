"""`vitlab attention` and `vitlab analyze` from the command line."""

import csv

import numpy as np
import pytest
from PIL import Image

from vitlab.cli import main


@pytest.fixture()
def picture(tmp_path):
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[10:30, 20:50] = (220, 40, 40)
    pixels[..., 2] = np.arange(64, dtype=np.uint8)[None] * 3
    path = tmp_path / "picture.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize(
    "model, options",
    [
        ("vit_tiny_patch16_224", ["--query", "cls"]),
        ("swin_tiny_patch4_window7_224", ["--query", "10,20", "--layer", "1"]),
        ("dat_tiny", ["--head", "1"]),
        ("vit_tiny_patch16_224", ["--rollout", "max"]),
        ("vit_tiny_patch16_224", ["--explain", "gradient-rollout", "--target", "1"]),
    ],
)
def test_attention_writes_a_picture(model, options, picture, tmp_path, capsys):
    out = tmp_path / "maps.png"
    args = ["--threads", "1", "attention", "--model", model, "--tiny", str(picture), "--img-size", "64"]
    assert main([*args, "--output", str(out), *options]) == 0
    assert str(out) in capsys.readouterr().out
    pixels = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10


def test_attention_lists_the_calls(picture, capsys):
    assert main(["--threads", "1", "attention", "--model", "pvt_v2_b0", "--tiny", str(picture), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "spatial-reduction" in lines[0]


def test_attention_errors_are_one_line(picture, capsys):
    assert main(["attention", "--model", "convnet_tiny", "--tiny", str(picture)]) == 2
    assert "no attention layers" in capsys.readouterr().err
    assert main(["attention", "--model", "vit_tiny_patch16_224", "--tiny", str(picture), "--layer", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert (
        main(["attention", "--model", "swin_tiny_patch4_window7_224", "--tiny", str(picture), "--rollout", "mean"]) == 2
    )
    assert "same tokens" in capsys.readouterr().err


def test_analyze_writes_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "analysis"
    args = ["--threads", "1", "analyze", "--model", "vit_mini_28", "--data", "demo", "--images", "12"]
    assert main([*args, "--batch-size", "5", "--output", str(out)]) == 0
    rows = list(csv.DictReader((out / "attention.csv").read_text().splitlines()))
    assert len(rows) == 4 * 4  # vit_mini_28: 4 blocks of 4 heads
    assert all(0 < float(r["mean_distance_px"]) < 28 * 2**0.5 for r in rows)
    assert len(list(csv.DictReader((out / "similarity.csv").read_text().splitlines()))) == 4
    for name in ("attention_distance.png", "entropy.png", "similarity.png"):
        assert (out / name).stat().st_size > 1000


def test_attention_on_a_dataset_image(tmp_path, capsys):
    out = tmp_path / "demo.png"
    args = ["--threads", "1", "attention", "--model", "vit_mini_28", "--data", "demo", "--index", "3"]
    assert main([*args, "--output", str(out)]) == 0
    assert out.stat().st_size > 5000
    assert main(["attention", "--model", "vit_mini_28"]) == 2
    assert "IMAGE" in capsys.readouterr().err


@pytest.mark.parametrize("model", __import__("vitlab").list_models(task="semantic-segmentation"))
def test_every_segmentation_model_draws_its_attention(model, picture, tmp_path, capsys):
    """The decoders' encoders (and Segmenter's mask transformer) are recorded like any backbone's; the
    model has no `img_size` of its own, so the image is prepared at its registered input size."""
    out = tmp_path / "maps.png"
    args = ["--threads", "1", "attention", "--model", model, "--tiny", str(picture), "--img-size", "64"]
    assert main([*args, "--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert np.asarray(Image.open(out).convert("RGB"), dtype=np.float64).std() > 10


def test_analyze_points_sequence_models_to_where_their_attention_is_drawn(capsys):
    """(`vitlab attention` on sequence models: tests/analysis/test_sequences.py.)"""
    assert main(["analyze", "--model", "image_to_sequence_vit", "--tiny", "--data", "demo"]) == 2
    assert "`vitlab attention --model NAME STRIP.png` draws" in capsys.readouterr().err
    assert main(["analyze", "--model", "transformer_small", "--tiny", "--data", "demo"]) == 2
    assert "--source IDS` draws" in capsys.readouterr().err


def test_analyze_a_segmentation_model_measures_its_encoder(tmp_path, capsys):
    out = tmp_path / "seg"
    args = ["--threads", "1", "analyze", "--model", "segformer_b0", "--tiny", "--data", "demo", "--images", "4"]
    assert main([*args, "--img-size", "64", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "analysing its encoder (MixVisionTransformer)" in printed and "patch |cos| per block" in printed
    with open(out / "attention.csv") as f:
        assert {row["layer"].split(".")[0] for row in csv.DictReader(f)} == {"stages"}
    assert main([*args, "--output", str(out)]) == 2  # the demo's 28x28 images are too small for it
    assert "at least 29x29 pixels, got 28x28" in capsys.readouterr().err
    assert main(["analyze", "--model", "transformer_small", "--tiny", "--data", "demo", "--output", str(out)]) == 2
    assert "token sequences, not images" in capsys.readouterr().err
