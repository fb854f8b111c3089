import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import vitlab
from vitlab.cli import main


def test_models_table(capsys):
    assert main(["models", "deit_tiny"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["model", "params", "GMACs", "input"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows["deit_tiny_patch16_224"][1:4] == ["5.72M", "1.25", "224x224"]
    assert rows["deit_tiny_distilled_patch16_224"][1] == "5.91M"
    assert main(["models", "nothing_like_this"]) == 2


@pytest.fixture
def classifier(tmp_path):
    torch.manual_seed(0)
    model = vitlab.create_model("deit_tiny_patch16_224", num_classes=6)
    path = tmp_path / "model.safetensors"
    names = ["ant", "bee", "cat", "dog", "eel", "fox"]
    save_file(model.state_dict(), path, metadata={"class_names": '["ant", "bee", "cat", "dog", "eel", "fox"]'})
    images = []
    for i, mode in enumerate(["RGB", "L", "RGBA", "P"]):
        image = Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)).convert(mode)
        images.append(tmp_path / f"img{i}.png")
        image.save(images[-1])
    return path, names, images


def test_predict_prints_top5_with_class_names(classifier, capsys):
    path, names, images = classifier
    assert main(["predict", "--model", "deit_tiny_patch16_224", "--checkpoint", str(path), *map(str, images)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(images[0])
    ranked = out[1:6]
    assert [line.split(".")[0].strip() for line in ranked] == ["1", "2", "3", "4", "5"]
    assert all(line.split()[-1] in names for line in ranked)
    percentages = [float(line.split()[1].rstrip("%")) for line in ranked]
    assert percentages == sorted(percentages, reverse=True)
    assert len(out) == 4 * 6


def test_predict_with_a_labels_file(classifier, tmp_path, capsys):
    path, _, images = classifier
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"label{i}" for i in range(6)) + "\n")
    assert (
        main(
            [
                "predict",
                "--model",
                "deit_tiny_patch16_224",
                "--checkpoint",
                str(path),
                "--labels",
                str(labels),
                "--top",
                "2",
                str(images[0]),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].split()[-1].startswith("label")


def test_predict_names_a_corrupt_image(classifier, tmp_path, capsys):
    path, _, images = classifier
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images[0].read_bytes()[:100])
    assert main(["predict", "--model", "deit_tiny_patch16_224", "--checkpoint", str(path), str(broken)]) == 2
    assert f"cannot read image {broken}" in capsys.readouterr().err


def test_predict_names_a_bad_checkpoint(tmp_path, capsys, classifier):
    _, _, images = classifier
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert main(["predict", "--model", "deit_tiny_patch16_224", "--checkpoint", str(bad), str(images[0])]) == 2
    assert "bad.safetensors is not a valid safetensors file" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "vitlab", "models", "deit_base_distilled_patch16_384"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "deit_base_distilled_patch16_384" in done.stdout
