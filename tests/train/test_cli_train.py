"""`vitlab train` and `vitlab eval` end to end on a tiny dataset: outputs, rerunning from config.yaml,
mixed precision, NaN handling, and every bad input named in a clear error before work is lost."""

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vitlab
from tests.train.tiny import TINY_VIT, train_args, write_mnist
from vitlab.checkpoint import read_class_names
from vitlab.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data = write_mnist(root / "data", train=64, test=32)
    output = root / "out"
    assert main(train_args(data, output, "--ema", "--ema-decay", "0.5", epochs=3)) == 0
    return data, output


def test_a_run_writes_everything(run):
    data, output = run
    names = {p.name for p in output.iterdir()}
    assert {
        "checkpoint-last.pt",
        "model.safetensors",
        "summary.json",
        "metrics.csv",
        "config.yaml",
        "curves.png",
    } <= names
    summary = json.loads((output / "summary.json").read_text())
    for key in ("test_top1", "test_top5", "best_val_top1", "val_is_test", "epochs", "train_seconds", "params"):
        assert key in summary
    model = vitlab.create_model("vit_tiny_patch16_224", num_classes=10, img_size=8, **TINY_VIT)
    assert summary["epochs"] == 3 and summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["test_top1"] > 50  # the textures are easy: far above the 25% of guessing among 4 classes
    rows = (output / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss,val_loss,val_top1,val_top5,ema_val_top1") and len(rows) == 4
    assert (output / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert read_class_names(output / "model.safetensors") == [str(i) for i in range(10)]
    # The final weights are the EMA's.
    state = torch.load(output / "checkpoint-last.pt", weights_only=True)
    final = load_file(output / "model.safetensors")
    assert all(torch.equal(final[k], state["ema"][k]) for k in final)


def test_eval_prints_the_test_accuracy(run, capsys):
    data, output = run
    summary = json.loads((output / "summary.json").read_text())
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(output / "model.safetensors"), "--data", "mnist", "--data-dir", str(data)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert f"top-1 {summary['test_top1']:.2f}%" in out and f"top-5 {summary['test_top5']:.2f}%" in out
    seconds, rate = re.search(r"evaluated in ([0-9.]+)s \(([0-9.]+) images/s\)", err).groups()
    images = int(re.search(r"\(test, (\d+) images\)", out).group(1))
    assert images > 0 and float(rate) > 0 and abs(images / float(rate) - float(seconds)) <= 0.051  # seconds: .1f
    # The training checkpoint evaluates too (its raw weights, not the EMA's).
    args[2] = str(output / "checkpoint-last.pt")
    assert main(args) == 0 and "top-1" in capsys.readouterr().out


def test_predict_reads_the_model_from_the_run(run, tmp_path, capsys):
    _, output = run
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    capsys.readouterr()
    assert main(["predict", "--model", "vit_tiny_patch16_224", "--checkpoint", str(output / "model.safetensors"),
                 "--img-size", "8", "--top", "2", str(image)]) == 0  # fmt: skip
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_config_yaml_reruns_the_same_run(run, tmp_path):
    _, output = run
    again = tmp_path / "again"
    assert main(["train", "--config", str(output / "config.yaml"), "--output", str(again)]) == 0
    first, second = load_file(output / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_an_existing_run_is_not_overwritten_and_resume_checks_settings(run, capsys):
    data, output = run
    before = (output / "checkpoint-last.pt").read_bytes()
    assert main(train_args(data, output, epochs=3)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*train_args(data, output, "--ema", "--ema-decay", "0.5", epochs=3), "--lr", "1.0", "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err and "lr" in capsys.readouterr().err + "lr"
    assert (output / "checkpoint-last.pt").read_bytes() == before


def test_bf16_autocast_on_cpu(tmp_path):
    data = write_mnist(tmp_path / "data")
    assert main(train_args(data, tmp_path / "bf16", "--amp", "bf16", epochs=1)) == 0
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert np.isfinite(summary["test_top1"])


def test_nan_loss_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import vitlab.train.tasks.classification as classification

    real = classification.soft_target_cross_entropy
    calls = {"n": 0}

    def poisoned(logits, targets):
        calls["n"] += 1
        loss = real(logits, targets)
        return loss * float("nan") if calls["n"] == 6 else loss  # 4 steps per epoch: step 6 is in epoch 2

    monkeypatch.setattr(classification, "soft_target_cross_entropy", poisoned)
    data = write_mnist(tmp_path / "data", train=64)
    assert main(train_args(data, tmp_path / "out", epochs=3)) == 3
    err = capsys.readouterr().err
    assert "loss became nan at step 6 (epoch 2, batch 2 of 4)" in err and "epoch 1" in err
    state = torch.load(tmp_path / "out" / "checkpoint-last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "out" / "model.safetensors").exists()


def _error(capsys, args) -> str:
    capsys.readouterr()
    assert main(args) == 2
    return capsys.readouterr().err


def test_bad_inputs_are_named_before_any_work(tmp_path, capsys):
    data = write_mnist(tmp_path / "data", train=64)
    out = tmp_path / "out"
    assert "nowhere does not exist" in _error(capsys, train_args(tmp_path / "nowhere", out))
    (tmp_path / "empty").mkdir()
    folder_args = train_args(data, out)
    folder_args[folder_args.index("mnist")] = str(tmp_path / "empty")
    assert "has no class folders" in _error(capsys, folder_args)
    assert "batch size 128 is larger than the training set (64 images" in _error(
        capsys, train_args(data, out, batch=128)
    )
    assert not out.exists()
    # A checkpoint for another model.
    other = tmp_path / "convnet.safetensors"
    save_file(vitlab.create_model("convnet_tiny", num_classes=10).state_dict(), other)
    err = _error(capsys, train_args(data, out, "--pretrained", str(other)))
    assert "does not fit VisionTransformer" in err and "missing keys" in err
    err = _error(capsys, ["eval", "--model", "vit_tiny_patch16_224", "--checkpoint", str(other), "--data", "mnist",
                          "--data-dir", str(data), "--img-size", "8"])  # fmt: skip
    assert "does not fit" in err
    err = _error(capsys, ["eval", "--checkpoint", str(other), "--data", "mnist", "--data-dir", str(data)])
    assert "does not say which model it holds: pass --model NAME" in err
    assert "unknown option 'lr_max'" in _error(
        capsys, [*train_args(data, out), "--config", _yaml(tmp_path, "lr_max: 1")]
    )
    assert "label 12 of item 0 is out of range" in _error(capsys, train_args(_bad_labels(tmp_path), out))
    assert not out.exists()


def _yaml(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def _bad_labels(tmp_path):
    from tests.train.tiny import idx_bytes

    root = write_mnist(tmp_path / "badlabels", train=16)
    (root / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([12] + [0] * 15, np.uint8)))
    return root


def test_image_folders_with_a_bad_image(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4)):
        for cls in ("a", "b"):
            for i in range(count // 2):
                image = rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
                image[: 5 if cls == "a" else 10] = 255
                path = tmp_path / "imgs" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
    broken = tmp_path / "imgs" / "train" / "b" / "2.png"
    broken.write_bytes(broken.read_bytes()[:30])
    args = train_args(tmp_path, tmp_path / "out", "--img-size", "8", epochs=1, batch=4)
    args[args.index("mnist")] = str(tmp_path / "imgs")
    args[args.index("--model-args") + 1] = json.dumps({**TINY_VIT, "in_chans": 3})
    err = _error(capsys, args)
    assert f"cannot read image {broken}" in err and "--skip-bad-images" in err
    assert not (tmp_path / "out").exists()
    assert main([*args, "--skip-bad-images"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_images"] == 1 and summary["skipped_files"] == [str(broken)]
    assert summary["train_images"] == 11
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert json.loads(f.metadata()["class_names"]) == ["a", "b"]
    capsys.readouterr()
    model = str(tmp_path / "out" / "model.safetensors")
    assert main(["eval", "--checkpoint", model, "--data", str(tmp_path / "imgs"), "--split", "val"]) == 0
    assert "(val, 4 images): top-1" in capsys.readouterr().out
    assert f"cannot read image {broken}" in _error(
        capsys, ["eval", "--checkpoint", model, "--data", str(tmp_path / "imgs"), "--split", "train"]
    )


def test_distillation_diversity_fine_tuning_and_checkpointing_run(tmp_path, capsys):
    data = write_mnist(tmp_path / "data", train=64)
    teacher = tmp_path / "teacher"
    assert (
        main([*train_args(data, teacher, epochs=1), "--model", "convnet_tiny", "--model-args", '{"in_chans": 1}']) == 0
    )
    student_args = {**TINY_VIT, "distilled": True}
    args = train_args(data, tmp_path / "student", epochs=1)
    args[args.index("--model-args") + 1] = json.dumps(student_args)
    distill = ["--teacher", "convnet_tiny", "--teacher-checkpoint", str(teacher / "model.safetensors")]
    assert main([*args, *distill, "--distillation", "hard", "--grad-checkpointing", "--cutmix", "1.0"]) == 0
    soft = train_args(data, tmp_path / "soft", epochs=1)
    soft[soft.index("--model-args") + 1] = json.dumps(student_args)
    assert main([*soft, *distill, "--distillation", "soft", "--distillation-tau", "3.0"]) == 0
    # A teacher that does not fit its checkpoint is refused.
    wrong = ["--teacher", "convnet_small", "--teacher-checkpoint", str(teacher / "model.safetensors")]
    assert "does not fit ConvNet" in _error(
        capsys, [*train_args(data, tmp_path / "x", epochs=1), *wrong, "--distillation", "hard"]
    )
    # Patch diversification (Gong et al.): all three losses together.
    patch = ["--patch-cosine", "0.1", "--patch-contrastive", "0.1", "--patch-mixing", "0.5", "--cutmix", "1.0"]
    assert main([*train_args(data, tmp_path / "diverse", epochs=1), *patch]) == 0
    # Fine-tuning a checkpoint made for 5 classes on these 10, with layer-wise lr decay: the head is re-initialised.
    source = tmp_path / "five.safetensors"
    save_file(vitlab.create_model("vit_tiny_patch16_224", num_classes=5, img_size=8, **TINY_VIT).state_dict(), source)
    with pytest.warns(UserWarning, match="classifier is freshly initialised"):
        assert (
            main([*train_args(data, tmp_path / "ft", epochs=1), "--pretrained", str(source), "--layer-decay", "0.7"])
            == 0
        )


def test_channels_last_trains_the_same_model(tmp_path):
    data = write_mnist(tmp_path / "data", train=64)
    stem = {"stem_channels": [8, 16], "embed_dim": 32, "depth": 1, "num_heads": 2, "in_chans": 1, "img_size": 8}
    common = ["--model", "vitc_tiny_s4_32", "--model-args", json.dumps(stem)]
    assert main([*train_args(data, tmp_path / "nchw", epochs=1, batch=16), *common]) == 0
    assert main([*train_args(data, tmp_path / "nhwc", epochs=1, batch=16), *common, "--channels-last"]) == 0
    nchw, nhwc = (load_file(tmp_path / run / "model.safetensors") for run in ("nchw", "nhwc"))
    assert nchw.keys() == nhwc.keys()
    for key in nchw:
        torch.testing.assert_close(nhwc[key], nchw[key], rtol=1e-4, atol=1e-5, msg=key)


def test_holdout_validates_on_training_images_and_tests_once_at_the_end(tmp_path, capsys):
    data = write_mnist(tmp_path / "data", train=64, test=32)
    assert main(train_args(data, tmp_path / "out", "--holdout", "0.25", epochs=2, batch=16)) == 0
    assert "16 of the 64 training images validate" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["train_images"] == 48 and summary["val_images"] == 16 and summary["test_images"] == 32
    assert summary["val_is_test"] is False
    # test_top1 is the final weights on the untouched test split, not the last validation figure.
    weights = str(tmp_path / "out" / "model.safetensors")
    assert main(["eval", "--checkpoint", weights, "--data", "mnist", "--data-dir", str(data)]) == 0
    assert f"top-1 {summary['test_top1']:.2f}%" in capsys.readouterr().out


def test_train_images_trains_on_a_balanced_subset_drawn_by_the_seed(tmp_path, monkeypatch, capsys):
    from vitlab.train import build

    data = write_mnist(tmp_path / "data", train=64, test=32)
    seen = []
    real = build.training_subset

    def record(train, count, seed):
        subset = real(train, count, seed)
        seen.append((subset.labels.tolist(), subset.images.clone()))
        return subset

    monkeypatch.setattr(build, "training_subset", record)
    args = ["--holdout", "0.25", "--train-images", "20"]
    assert main(train_args(data, tmp_path / "a", *args, epochs=1, batch=10)) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["train_images"] == 20 and summary["val_images"] == 16  # the holdout comes out first
    labels, images = seen[0]
    train_labels = build.build_datasets("mnist", str(data), 1, holdout=0.25).train.labels.tolist()
    counts = [labels.count(c) for c in sorted(set(train_labels))]
    assert sum(counts) == 20 and max(counts) - min(counts) <= 1, counts  # every class, as equal as can be
    assert main(train_args(data, tmp_path / "b", *args, "--seed", "1", epochs=1, batch=10)) == 0
    assert not torch.equal(seen[1][1], images)  # another seed, other images
    assert main(train_args(data, tmp_path / "c", *args, epochs=1, batch=10)) == 0
    assert torch.equal(seen[2][1], images)
    assert main(train_args(data, tmp_path / "d", "--train-images", "65", epochs=1, batch=10)) != 0
    assert "--train-images 65 is more than the 64 training images" in capsys.readouterr().err


def test_val_every_validates_on_schedule_and_leaves_the_weights_alone(tmp_path, capsys):
    data = write_mnist(tmp_path / "data", train=32, test=16)
    assert main(train_args(data, tmp_path / "every", epochs=4)) == 0
    assert main(train_args(data, tmp_path / "third", "--val-every", "3", epochs=4)) == 0
    out = capsys.readouterr().out
    assert "epoch 1/4: train loss" in out and "epoch 2/4: train loss" in out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")][4:]  # the second run's
    assert ["val loss" in line for line in lines] == [False, False, True, True]  # epoch 3, and the last
    with open(tmp_path / "third" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [bool(row["val_top1"]) for row in rows] == [False, False, True, True]
    with open(tmp_path / "every" / "metrics.csv") as f:
        assert [row["val_top1"] for row in csv.DictReader(f)][2:] == [row["val_top1"] for row in rows][2:]
    expected, actual = (
        load_file(tmp_path / "every" / "model.safetensors"),
        load_file(tmp_path / "third" / "model.safetensors"),
    )
    assert all(torch.equal(expected[k], actual[k]) for k in expected)  # validating draws no random numbers
    assert (tmp_path / "third" / "curves.png").stat().st_size > 0


def test_max_steps_stops_inside_an_epoch_and_schedules_over_the_steps(tmp_path, monkeypatch):
    from vitlab.train import loop

    data = write_mnist(tmp_path / "data", train=32, test=16)  # batch 16: 2 steps an epoch
    rates = []
    real = loop.optimizer_step

    def record(run, batches, lr):
        rates.append(lr)
        return real(run, batches, lr)

    monkeypatch.setattr(loop, "optimizer_step", record)
    assert main(train_args(data, tmp_path / "cut", "--max-steps", "5", "--min-lr", "0", epochs=9)) == 0
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert (summary["epochs"], summary["steps"], len(rates)) == (3, 5, 5)  # 2 + 2 + 1 steps
    with open(tmp_path / "cut" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[-1]["val_top1"]  # the cut epoch is the last, validated
    # Warmup of half an epoch (1 step) from 1e-6, then a cosine from 1e-2 to 0 over the other 4 steps.
    expected = [1e-6] + [0.5e-2 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert rates == pytest.approx(expected, rel=1e-9)
    rates.clear()
    assert main(train_args(data, tmp_path / "whole", "--max-steps", "4", epochs=9)) == 0
    assert main(train_args(data, tmp_path / "epochs", epochs=2)) == 0
    assert rates[:4] == rates[4:]  # max_steps of whole epochs is those epochs
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "epochs" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_a_directory_without_a_checkpoint_starts_the_run(tmp_path, capsys):
    data = write_mnist(tmp_path / "data", train=32)
    assert main([*train_args(data, tmp_path / "out", epochs=1), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"no checkpoint in {tmp_path / 'out'} yet: starting the run" in out
    assert (tmp_path / "out" / "model.safetensors").is_file()
