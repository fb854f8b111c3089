"""What a new user meets in the first hour, tried the way a user tries it: the CLI in a subprocess, or the
public Python API. Nothing may be silently wrong; every bad input gets one clear line."""

import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import vitlab
from vitlab.checkpoint import CheckpointError
from vitlab.cli import main, vitlab_command
from vitlab.train.rundir import RunDir

NAME = "vitc_tiny_s4_32"
ARGS = dict(stem_channels=[8, 16], embed_dim=32, depth=1, num_heads=2, in_chans=1, img_size=16, num_classes=2)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "vitlab", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """What `vitlab train` leaves: a 2-class model.safetensors naming its model, arguments and classes."""
    root = tmp_path_factory.mktemp("first-hour")
    torch.manual_seed(0)
    model = vitlab.create_model(NAME, **ARGS)
    RunDir(root / "run").write_weights(model.state_dict(), ["cat", "dog"], NAME, ARGS)
    images = []
    for i in range(3):
        images.append(root / f"img{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24), dtype=np.uint8)).save(images[-1])
    return root / "run" / "model.safetensors", model.eval(), images


def test_a_vitlab_file_rebuilds_the_model_it_describes(run_dir):
    path, trained, _ = run_dir
    for model in (vitlab.create_model(NAME, pretrained=path), vitlab.load_model(path), vitlab.load_model(path.parent)):
        assert model.num_classes == 2 and model.class_names == ["cat", "dog"]
        loaded, saved = model.state_dict(), trained.state_dict()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_class_count_nobody_asked_for_is_an_error_naming_both(run_dir, tmp_path):
    path, trained, _ = run_dir
    bare = tmp_path / "bare.safetensors"  # the same weights without vitlab's metadata
    save_file(trained.state_dict(), bare)
    small = {k: v for k, v in ARGS.items() if k != "num_classes"}
    with pytest.raises(CheckpointError, match="classifier for 2 classes, the model 1000: pass num_classes=2"):
        vitlab.create_model(NAME, pretrained=bare, **small)
    with pytest.warns(UserWarning, match="freshly initialised"):  # asked for: fine-tuning on 5 classes
        assert vitlab.create_model(NAME, pretrained=path, num_classes=5).num_classes == 5


def test_predict_needs_no_model_name_and_refuses_a_labels_file_of_another_length(run_dir, tmp_path):
    path, _, images = run_dir
    done = cli("predict", "--checkpoint", str(path), "--top", "1", *map(str, images))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("  1. ") == 3 and ("cat" in done.stdout or "dog" in done.stdout)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    done = cli("predict", "--checkpoint", str(path), "--labels", str(labels), str(images[0]))
    assert done.returncode == 2 and done.stderr.strip() == f"error: {labels} names 3 classes; the model has 2"


def test_predict_and_eval_prepare_an_image_the_same_way(run_dir, tmp_path):
    path, model, images = run_dir
    folder = tmp_path / "one"
    (folder / "cat").mkdir(parents=True)
    Image.open(images[0]).save(folder / "cat" / "a.png")
    from vitlab.data.folders import evaluation_folder
    from vitlab.data.transforms import eval_load_size, preprocess_files

    pre = model.entry.preprocess
    predicted = preprocess_files([images[0]], 16, pre.mean, pre.std, pre.crop_pct, channels=1)
    dataset = evaluation_folder(folder, "all", eval_load_size(16, pre.crop_pct), ["cat", "dog"])
    from vitlab.data.augment import EvalPreprocess

    evaluated = EvalPreprocess(16, pre.mean, pre.std, 1)(dataset[0][0][None])
    assert torch.equal(predicted, evaluated)


def write_folder(root, counts):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_eval_scores_a_whole_folder_and_matches_classes_by_name(run_dir, tmp_path):
    _, model, _ = run_dir
    write_folder(tmp_path / "imgs", {"cat": 8, "dog": 4})
    # A classifier that says "cat" for every image, saved twice: classes (cat, dog), and (dog, cat) with the
    # head's rows swapped. Matched by name, both score 8 of 12; matched by sorted folder order, the second
    # would score the 4 dogs instead.
    state = {**model.state_dict(), "head.bias": torch.tensor([50.0, -50.0])}
    RunDir(tmp_path / "a").write_weights(state, ["cat", "dog"], NAME, ARGS)
    swapped = {k: v.flip(0) if k.startswith("head.") else v for k, v in state.items()}
    RunDir(tmp_path / "b").write_weights(swapped, ["dog", "cat"], NAME, ARGS)
    for run in ("a", "b"):
        done = cli("eval", "--checkpoint", str(tmp_path / run / "model.safetensors"), "--data", str(tmp_path / "imgs"))
        assert done.returncode == 0, done.stderr
        assert "(all, 12 images): top-1 66.67%" in done.stdout
    write_folder(tmp_path / "other", {"cat": 1, "horse": 1})
    done = cli("eval", "--checkpoint", str(tmp_path / "a" / "model.safetensors"), "--data", str(tmp_path / "other"))
    assert done.returncode == 2 and "class folders that are not among the classes: horse (the classes: cat, dog)" in (
        done.stderr
    )


def test_an_hf_model_directory_loads_with_its_config(tmp_path):
    from tests.parity.test_fixtures import FIXTURES, read_fixture

    meta, state, _, _ = read_fixture(next(p for p in FIXTURES if p.stem == "vit_small_patch16_224-hf-defaults"))
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(meta["hf_config"])
    model = vitlab.create_model("vit_small_patch16_224", pretrained=tmp_path)  # the directory, as HF saves it
    assert model.class_names == ["cat", "dog", "bird"] and model.embed_dim == 48 and model.img_size == (64, 64)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-12}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--lr", "-1", "--output", "x"], "error: option lr must be positive, got -1.0"),
        (["train", "--device", "cuda", "--output", "x"], "error: --device cuda was asked for, but this machine has no"),
        (["eval", "--device", "cuda", "--checkpoint", "x.safetensors", "--data", "demo"], "error: --device cuda was"),
        (["predict", "--img-size", "-5", "--checkpoint", "x", "y.png"], "--img-size: must be a positive integer"),
    ],
    ids=["lr", "train-device", "eval-device", "img-size"],
)
def test_bad_options_get_one_clear_line(tmp_path, args, message):
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("this machine has a GPU")
    done = subprocess.run(
        [sys.executable, "-m", "vitlab", *args], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_of_another_model_says_so_first(run_dir, capsys):
    path, _, images = run_dir
    assert main(["predict", "--model", "swin_tiny_patch4_window7_224", "--checkpoint", str(path), str(images[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} holds a {NAME} with 2 classes; you asked for swin_tiny_patch4_window7_224")


def test_rgb_weights_load_into_a_grey_model_by_summing_the_filters(tmp_path):
    rgb = vitlab.create_model("vit_tiny_patch16_224", embed_dim=32, depth=1, num_heads=2, img_size=32).eval()
    save_file(rgb.state_dict(), tmp_path / "rgb.safetensors")
    grey = vitlab.create_model(
        "vit_tiny_patch16_224", pretrained=tmp_path / "rgb.safetensors", in_chans=1, embed_dim=32, depth=1,
        num_heads=2, img_size=32,
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)))  # a grey image is R = G = B


def test_what_a_timm_user_reaches_for(tmp_path):
    with pytest.raises(KeyError, match="did you mean swin_tiny_patch4_window7_224"):
        vitlab.create_model("swim_tiny_patch4_window7_224")
    with pytest.raises(KeyError, match="did you mean vit_base_patch16_224"):
        vitlab.create_model("ViT_base_patch16_224")
    model = vitlab.create_model("deit_tiny_patch16_224", num_classes=3)
    assert model.get_classifier() is model.head
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406) and model.pretrained_cfg["input_size"] == (3, 224, 224)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    again = vitlab.create_model("deit_tiny_patch16_224", checkpoint_path=tmp_path / "w.safetensors", num_classes=3)
    assert torch.equal(again.head.weight, model.head.weight)
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"vitlab {vitlab.__version__}"


def test_the_hint_the_program_prints_runs_as_printed():
    done = subprocess.run([*shlex.split(vitlab_command()), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("vitlab ")


def test_threads_option_sets_the_intra_op_threads(run_dir, capsys):
    path, _, images = run_dir
    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "predict", "--checkpoint", str(path), str(images[0])]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_wrong_checkpoint_is_described_by_what_the_file_holds(tmp_path):
    deit = vitlab.create_model("deit_tiny_patch16_224", embed_dim=32, depth=1, num_heads=2, img_size=32)
    save_file(deit.state_dict(), tmp_path / "deit.safetensors")
    with pytest.raises(CheckpointError) as caught:  # not taken for an official Swin checkpoint
        vitlab.create_model("swin_tiny_patch4_window7_224", pretrained=tmp_path / "deit.safetensors")
    assert "(native layout)" in str(caught.value) and "official" not in str(caught.value)
    with pytest.raises(CheckpointError) as caught:  # the position table is reported with the file's shape
        vitlab.create_model("vit_base_patch16_224", pretrained=tmp_path / "deit.safetensors", num_classes=1000)
    assert "pos_embed (checkpoint (1, 5, 32), model (1, 197, 768))" in str(caught.value)
