"""`vitlab train`, `eval` and `predict` with a segmentation model (the toy segmenter of toy.py, registered
for these tests only): the run's files and summary, the loss against a per-pixel computation, the poly
schedule, the head's learning rate, SGD, two processes, and classification options refused."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.helpers import run_two_processes
from tests.segmentation import toy
from tests.segmentation.data import train_args, write_folder
from vitlab.cli import main
from vitlab.segmentation import SegmentationOutput
from vitlab.train.build import build_optimizer
from vitlab.train.config import make_config
from vitlab.train.optim import poly_lr
from vitlab.train.tasks.segmentation import SegmentationLoss


@pytest.fixture(scope="module")
def registered():
    with toy.registered() as name:
        yield name


@pytest.fixture(scope="module")
def run(registered, tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    data = write_folder(root / "data", train=16, val=6, size=(20, 28))
    output = root / "run"
    assert main(train_args(data, output, "--model-args", '{"aux": true}', "--head-lr-mult", "10", epochs=3)) == 0
    return data, output


def test_a_run_writes_everything(run):
    _, output = run
    names = {p.name for p in output.iterdir()}
    assert {"checkpoint-last.pt", "model.safetensors", "summary.json", "metrics.csv", "config.yaml", "curves.png",
            "predictions.png"} <= names  # fmt: skip
    summary = json.loads((output / "summary.json").read_text())
    assert summary["test_images"] == 6 and summary["num_classes"] == 4 and summary["epochs"] == 3
    assert set(summary["test_per_class_iou"]) == {"background", "red", "blue", "green"}
    assert summary["test_miou"] == pytest.approx(
        np.mean([v for v in summary["test_per_class_iou"].values() if v is not None])
    )
    assert summary["test_per_class_iou"]["background"] > 50 and summary["test_aacc"] > 70
    assert summary["best_val_miou"] == pytest.approx(summary["test_miou"])  # the val split is the test split
    rows = (output / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,lr,train_loss,val_loss,val_miou,val_macc,val_aacc,seconds" and len(rows) == 4
    assert (output / "predictions.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_prints_the_table_and_the_same_miou(run, capsys):
    data, output = run
    summary = json.loads((output / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(output / "model.safetensors"), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"mIoU {summary['test_miou']:.2f}  mAcc {summary['test_macc']:.2f}  aAcc {summary['test_aacc']:.2f}" in out
    assert out.splitlines()[1].split() == ["class", "IoU", "Acc"] and "green" in out
    slide = ["--slide", "--crop-size", "12", "--stride", "8", "--flip", "--scales", "1.0", "1.25"]
    assert main(["eval", "--checkpoint", str(output / "checkpoint-last.pt"), "--data", str(data), *slide]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(output / "model.safetensors"), "--data", str(data), "--stride", "4"]) == 2
    assert "add --slide" in capsys.readouterr().err


def test_predict_writes_a_palette_mask_and_an_overlay(run, tmp_path, capsys):
    data, output = run
    image = data / "val" / "images" / "000.png"
    capsys.readouterr()
    args = ["predict", "--checkpoint", str(output / "model.safetensors"), "--output", str(tmp_path), str(image)]
    assert main(args) == 0
    mask = Image.open(tmp_path / "000_mask.png")
    assert mask.mode == "P" and mask.size == Image.open(image).size
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2, 3}
    assert (tmp_path / "000_overlay.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "000_mask.png" in out and "background" in out


def test_the_loss_is_cross_entropy_over_labelled_pixels_plus_weighted_aux():
    class Fixed(torch.nn.Module):
        align_corners = False

        def __init__(self, main, aux):
            super().__init__()
            self.main, self.aux = main, aux

        def forward_logits(self, x):
            return SegmentationOutput(self.main, [self.aux], [0.4])

    g = torch.Generator().manual_seed(0)
    main_logits, aux_logits = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 2, 3, generator=g)
    labels = torch.randint(0, 3, (2, 8, 10), generator=g)
    labels[0, :3] = 255
    loss = SegmentationLoss(Fixed(main_logits, aux_logits))(torch.zeros(2, 3, 8, 10), labels)

    def per_pixel(logits):
        up = F.interpolate(logits, size=(8, 10), mode="bilinear", align_corners=False)
        terms = [
            -torch.log_softmax(up[b, :, i, j], 0)[labels[b, i, j]]
            for b in range(2) for i in range(8) for j in range(10) if labels[b, i, j] != 255
        ]  # fmt: skip
        return torch.stack(terms).mean()

    torch.testing.assert_close(loss, per_pixel(main_logits) + 0.4 * per_pixel(aux_logits))


def test_poly_schedule_by_hand():
    assert poly_lr(0, 100, 10, 1.0, 0.0, 1e-6, 1.0) == pytest.approx(1e-6)
    assert poly_lr(5, 100, 10, 1.0, 0.0, 0.0, 1.0) == pytest.approx(0.5)
    assert poly_lr(10, 100, 10, 1.0, 0.0, 0.0, 1.0) == pytest.approx(1.0)
    assert poly_lr(55, 100, 10, 1.0, 0.1, 0.0, 1.0) == pytest.approx(0.1 + 0.9 * 0.5)
    assert poly_lr(55, 100, 10, 1.0, 0.0, 0.0, 0.9) == pytest.approx(0.5**0.9)
    assert poly_lr(100, 100, 10, 1.0, 0.01, 0.0, 1.0) == pytest.approx(0.01)


def test_the_head_learns_at_its_multiplier_and_sgd_has_momentum(registered):
    model = toy.ToySegmenter(num_classes=3, aux=True)
    config = make_config({"model": "toy_seg", "head_lr_mult": 10.0, "lr": 0.1, "lr_scaling": "none"})
    groups = build_optimizer(config, model, None, torch.device("cpu")).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        heads = {names[id(p)].split(".")[0] in ("decode_head", "auxiliary_head") for p in group["params"]}
        assert len(heads) == 1
        assert group["lr_scale"] == (10.0 if heads.pop() else 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    sgd = build_optimizer(make_config({"optimizer": "sgd", "momentum": 0.8}), model, None, torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8


def test_classification_options_are_refused_by_name(registered, tmp_path, capsys):
    data = write_folder(tmp_path / "data", train=4, val=2)
    assert main(train_args(data, tmp_path / "run", "--mixup", "0.8", "--layer-decay", "0.7")) == 2
    assert "--mixup, --layer-decay: classification options" in capsys.readouterr().err
    bad = write_folder(tmp_path / "bad", train=4, val=2)
    Image.fromarray(np.full((20, 20), 9, np.uint8), mode="L").save(bad / "val" / "masks" / "001.png")
    assert main(train_args(bad, tmp_path / "run2")) == 2
    err = capsys.readouterr().err
    assert "val/masks/001.png" in err and "is 20x20 but its image" in err
    assert not (tmp_path / "run2").exists()


def test_two_processes_sum_the_confusion_matrices_exactly(registered, tmp_path):
    data = write_folder(tmp_path / "data", train=16, val=7, size=(20, 20))
    settings = ["--model-args", '{"norm": false}', "--ratio-range", "1", "1", "--hflip", "0", "--no-photometric",
                "--img-size", "20", "--crop-size", "20"]  # fmt: skip
    double = tmp_path / "double"
    worker = Path(__file__).with_name("ddp_worker.py")
    stdout, _ = run_two_processes(worker, train_args(data, double, *settings, epochs=2, batch=4), timeout=600)
    assert "2 process(es)" in stdout
    summary = json.loads((double / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["test_images"] == 7  # 4 images on one process, 3 on the other
    # One process scoring the same weights on all 7 images finds the same numbers.
    from vitlab.train.seg_eval import evaluate_segmentation

    alone = evaluate_segmentation(None, str(double / "model.safetensors"), str(data), workers=0)
    assert alone["miou"] == summary["test_miou"] and alone["aacc"] == summary["test_aacc"]
    assert not math.isnan(alone["miou"])


RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "segmentation-demo.yaml"


def test_the_demo_recipe_runs_unchanged_on_a_folder_and_on_the_demo(registered, tmp_path, capsys):
    # segformer_b0 lives in another module; the toy segmenter stands in for it here.
    data = write_folder(tmp_path / "data", train=16, val=4, size=(30, 22))
    common = ["train", "--config", str(RECIPE), "--model", "toy_seg", "--epochs", "1", "--progress", "off"]
    assert main([*common, "--data-dir", str(data), "--output", str(tmp_path / "folder")]) == 0
    summary = json.loads((tmp_path / "folder" / "summary.json").read_text())
    assert summary["data"] == str(data) and summary["num_classes"] == 4 and summary["test_images"] == 4
    assert main([*common, "--output", str(tmp_path / "demo")]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["data"] == "seg-demo" and summary["train_images"] == 2000 and summary["num_classes"] == 11
    assert summary["test_per_class_iou"]["background"] > 50  # one epoch of a 3k-parameter model: background only
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "demo" / "model.safetensors"), "--data", "seg-demo"]) == 0
    out = capsys.readouterr().out
    assert "(val, 300 images)" in out and f"mIoU {summary['test_miou']:.2f}  mAcc {summary['test_macc']:.2f}" in out
