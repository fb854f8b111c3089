"""`vitlab predict` on a strip: the labels, and the decoder's cross-attention drawn over the strip."""

import numpy as np
import torch
from PIL import Image

from tests.seq2seq.test_train import TINY_STRIPS
from vitlab.cli import main
from vitlab.registry import create_model
from vitlab.seq2seq.predict import load_strip, read_strip
from vitlab.train.rundir import RunDir


def test_predict_prints_the_labels_and_draws_the_cross_attention(tmp_path, capsys):
    torch.manual_seed(0)
    args = {**TINY_STRIPS, "patch_size": 7, "img_size": 28, "num_classes": 10}
    model = create_model("image_to_sequence_vit", **args)
    RunDir(tmp_path).write_weights(model.state_dict(), [f"c{i}" for i in range(10)], "image_to_sequence_vit", args)
    strip = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 84), dtype=np.uint8)).save(strip)
    assert main(["predict", "--checkpoint", str(tmp_path / "model.safetensors"), "--draw", str(tmp_path / "a.png"),
                 str(strip)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith(f"{strip}: c") and (tmp_path / "a.png").stat().st_size > 0

    x = load_strip(strip, model.eval())
    assert x.shape == (1, 1, 28, 112)  # padded with blank to the 4 images the model reads
    tokens, attention = read_strip(model, x)
    assert attention.shape == (len(tokens), 4, 16)  # 7x7 patches of 28 x 112
    assert torch.all(attention.flatten(1).sum(1) <= 1.0 + 1e-6)  # the class token takes the rest


def test_predict_refuses_a_strip_wider_than_the_model_reads(tmp_path, capsys):
    args = {**TINY_STRIPS, "patch_size": 7, "img_size": 28, "num_classes": 10}
    RunDir(tmp_path).write_weights(
        create_model("image_to_sequence_vit", **args).state_dict(), [], "image_to_sequence_vit", args
    )
    strip = tmp_path / "wide.png"
    Image.fromarray(np.zeros((28, 200), dtype=np.uint8)).save(strip)
    assert main(["predict", "--checkpoint", str(tmp_path / "model.safetensors"), str(strip)]) == 2
    assert "200 pixels wide" in capsys.readouterr().err
