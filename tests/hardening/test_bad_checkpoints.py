"""Bad checkpoints, generated: truncated, mis-typed, NaN/infinite, mis-shaped, another family's, and
pickles tampered to run code in every container torch writes (zip and legacy, pickle protocols 2
and 4). Each is refused with the key or the reason named, through the API and through every CLI
command that reads weights; nothing in a tampered file ever runs.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save, save_file

import vitlab
from vitlab.checkpoint import CheckpointError, load_checkpoint
from vitlab.checkpoint_checks import allow_nonfinite
from vitlab.cli import main
from vitlab.registry import get_entry

NAME = "deit_tiny_patch16_224"
ARGS = {"num_classes": 3, "img_size": 32, "embed_dim": 16, "depth": 1, "num_heads": 2}
METADATA = {"vitlab_model": NAME, "vitlab_model_args": json.dumps(ARGS), "class_names": '["a", "b", "c"]'}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return vitlab.create_model(NAME, **ARGS)


class Payload:
    """What an attacker pickles: unpickling it would call os.system and create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tampered(path: Path, marker: Path, zip_format: bool, protocol: int) -> None:
    state = tiny_model().state_dict()
    state["head.weight"] = Payload(marker)  # a weight replaced by code
    torch.save(state, path, _use_new_zipfile_serialization=zip_format, pickle_protocol=protocol)


def bad_checkpoints(folder: Path) -> dict[str, str]:
    """Write the corpus into `folder`; returns {file name: what the error must say}."""
    folder.mkdir(exist_ok=True)
    good = tiny_model().state_dict()
    marker = folder / "code-ran"
    expected = {}
    for zip_format in (True, False):
        for protocol in (2, 4):
            name = f"tampered-{'zip' if zip_format else 'legacy'}-p{protocol}.pth"
            tampered(folder / name, marker, zip_format, protocol)
            expected[name] = "posix.system"
    blob = save(good, metadata=METADATA)
    (folder / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    expected["truncated.safetensors"] = "not a valid safetensors file"
    (folder / "header-only.safetensors").write_bytes(blob[:8])
    expected["header-only.safetensors"] = "not a valid safetensors file"
    (folder / "empty.safetensors").write_bytes(b"")
    expected["empty.safetensors"] = "not a valid safetensors file"
    buffer = io.BytesIO()
    torch.save(good, buffer)
    (folder / "truncated.pth").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    expected["truncated.pth"] = "not a readable PyTorch checkpoint"
    legacy = io.BytesIO()
    torch.save(good, legacy, _use_new_zipfile_serialization=False)
    (folder / "truncated-legacy.pth").write_bytes(legacy.getvalue()[: len(legacy.getvalue()) // 2])
    expected["truncated-legacy.pth"] = "not a readable PyTorch checkpoint"
    (folder / "text.pth").write_text("not a checkpoint\n")
    expected["text.pth"] = "not a readable PyTorch checkpoint"
    with zipfile.ZipFile(folder / "no-pickle.pth", "w") as archive:
        archive.writestr("archive/version", "3\n")
    expected["no-pickle.pth"] = "not a readable PyTorch checkpoint"
    variants = {
        "nan.safetensors": ({**good, "blocks.0.attn.qkv.weight": good["blocks.0.attn.qkv.weight"] * float("nan")},
                            "blocks.0.attn.qkv.weight (768 of 768 values)"),  # 48 x 16
        "inf.safetensors": ({**good, "norm.bias": good["norm.bias"] + float("inf")}, "norm.bias (16 of 16 values)"),
        "int-weights.safetensors": ({**good, "head.weight": good["head.weight"].long()}, "head.weight (torch.int64"),
        "bool-weights.safetensors": ({**good, "pos_embed": good["pos_embed"] > 0}, "pos_embed (torch.bool"),
        "mis-shaped.safetensors": ({**good, "pos_embed": good["pos_embed"][:, :3]}, "mis-shaped keys (1): pos_embed"),
        "another-family.safetensors": (
            vitlab.create_model("swin_tiny_patch4_window7_224", **get_entry(
                "swin_tiny_patch4_window7_224").tiny).state_dict(), "missing keys"),
    }  # fmt: skip
    for name, (state, says) in variants.items():
        save_file({k: v.contiguous() for k, v in state.items()}, folder / name, metadata=METADATA)
        expected[name] = says
    return expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return folder, bad_checkpoints(folder)


def test_every_bad_checkpoint_is_refused_through_the_api_with_the_reason(corpus):
    folder, expected = corpus
    assert len(expected) >= 17
    for name, says in expected.items():
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(tiny_model(), folder / name)
        assert str(folder / name) in str(caught.value) and says in str(caught.value), str(caught.value)
        with pytest.raises(CheckpointError, match=says.replace("(", r"\(").replace(")", r"\)")):
            vitlab.create_model(NAME, pretrained=folder / name, **ARGS)
    assert not (folder / "code-ran").exists()  # no tampered pickle ran its code


def test_nonfinite_weights_load_when_asked(corpus, tmp_path, capsys):
    folder, _ = corpus
    Image.new("RGB", (40, 36), (200, 60, 30)).save(tmp_path / "x.png")
    assert (
        main(["predict", "--checkpoint", str(folder / "nan.safetensors"), "--allow-nonfinite", str(tmp_path / "x.png")])
        == 0
    )
    assert "nan%" in capsys.readouterr().out  # loaded as asked: the NaN weights give NaN probabilities
    model = tiny_model()
    load_checkpoint(model, folder / "nan.safetensors", allow_nonfinite=True)
    assert model.blocks[0].attn.qkv.weight.isnan().all()
    with allow_nonfinite():
        vitlab.create_model(NAME, pretrained=folder / "inf.safetensors", **ARGS)
    with pytest.raises(CheckpointError, match="NaN or infinite"):  # the permission ends with the block
        vitlab.create_model(NAME, pretrained=folder / "inf.safetensors", **ARGS)


def test_half_precision_checkpoints_still_load(tmp_path):
    half = {k: v.half() for k, v in tiny_model().state_dict().items()}
    save_file(half, tmp_path / "half.safetensors")
    model = tiny_model()
    load_checkpoint(model, tmp_path / "half.safetensors")
    assert torch.equal(model.state_dict()["head.weight"], half["head.weight"].float())


def cli_commands(path: Path, data: Path, image: Path, out: Path) -> dict[str, list[str]]:
    model = ["--model", NAME, "--checkpoint", str(path)]
    return {
        "predict": ["predict", "--checkpoint", str(path), str(image)],
        "eval": ["eval", "--checkpoint", str(path), "--data", str(data), "--workers", "0", "--device", "cpu"],
        "attention": ["attention", *model, "--model-args", json.dumps(ARGS), str(image), "--output",
                      str(out / "a.png")],
        "analyze": ["analyze", *model, "--model-args", json.dumps(ARGS), "--data", str(data), "--split", "train",
                    "--images", "2", "--output", str(out / "analysis")],
        "train": ["train", "--model", NAME, "--model-args", json.dumps(ARGS), "--pretrained", str(path), "--data",
                  str(data), "--epochs", "1", "--batch-size", "2", "--output", str(out / "run"), "--device", "cpu"],
    }  # fmt: skip


@pytest.mark.parametrize("name", ["tampered-zip-p2.pth", "tampered-legacy-p4.pth", "nan.safetensors",
                                  "truncated.safetensors", "int-weights.safetensors"])  # fmt: skip
def test_every_cli_command_that_reads_weights_refuses_them(corpus, tmp_path, capsys, name):
    folder, expected = corpus
    data = tmp_path / "data"
    for cls in ("a", "b", "c"):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 36), (80 * i, 60, 30)).save(data / cls / f"{i}.png")
    for command, argv in cli_commands(folder / name, data, data / "a" / "0.png", tmp_path).items():
        assert main(argv) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(folder / name) in err and expected[name] in err, (command, err)
    assert not (folder / "code-ran").exists()
