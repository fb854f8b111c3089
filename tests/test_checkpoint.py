import argparse
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitlab
from vitlab.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, read_class_names


def tiny(**kwargs):
    config = dict(embed_dim=24, depth=1, num_heads=2, img_size=32, num_classes=4)
    config.update(kwargs)
    return vitlab.create_model("vit_small_patch16_224", **config).eval()


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_round_trip_through_every_format(tmp_path, suffix):
    source, target = tiny(), tiny()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)
    assert load_checkpoint(target, path) == "native"
    assert same_weights(source, target)


def test_training_checkpoint_nesting_and_module_prefix_are_unwrapped(tmp_path):
    source, target = tiny(), tiny()
    wrapped = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3, "args": {"lr": 1.0}}
    torch.save(wrapped, tmp_path / "w.pth")
    load_checkpoint(target, tmp_path / "w.pth")
    assert same_weights(source, target)


def test_ema_weights_are_taken_when_asked(tmp_path):
    live, ema, target = tiny(), tiny(), tiny()
    torch.save({"state_dict": live.state_dict(), "state_dict_ema": ema.state_dict()}, tmp_path / "w.pth.tar")
    load_checkpoint(target, tmp_path / "w.pth.tar", use_ema=True)
    assert same_weights(ema, target)
    torch.save({"state_dict": live.state_dict()}, tmp_path / "noema.pth")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_checkpoint(target, tmp_path / "noema.pth", use_ema=True)


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class SystemCall:
    """Unpickling this runs os.system (the classic malicious checkpoint)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    ("payload", "named"),
    [(Payload, "builtins.getattr"), (SystemCall, "system"), (lambda marker: argparse.Namespace(marker=marker), None)],
    ids=["getattr", "os.system", "Namespace"],
)
def test_pickled_code_is_refused_with_vitlabs_message_and_never_run(tmp_path, payload, named, zip_format):
    marker = tmp_path / "pwned"
    source = tiny()
    command = f"touch {marker}" if payload is SystemCall else str(marker)
    checkpoint = {"model": source.state_dict(), "args": payload(command), "epoch": 3}
    torch.save(checkpoint, tmp_path / "file.pth", _use_new_zipfile_serialization=zip_format)
    model = tiny()
    if named is None:  # timm's training checkpoints: the arguments are skipped, the weights load
        load_checkpoint(model, tmp_path / "file.pth")
        loaded, saved = model.state_dict(), source.state_dict()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)
        return
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, tmp_path / "file.pth")
    message = str(caught.value)
    assert f"refused to load {tmp_path / 'file.pth'}" in message and named in message
    assert "state_dict()" in message and "weights_only" not in message  # how to re-save; never "turn safety off"
    assert not marker.exists()


def test_mismatched_checkpoint_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = tiny().state_dict()
    del state["blocks.0.norm1.weight"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    state["norm.bias"] = torch.zeros(5)
    save_file(state, tmp_path / "bad.safetensors")
    target = tiny()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(target, tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "bad.safetensors" in message
    assert "missing keys (1): blocks.0.norm1.weight" in message
    assert "unexpected keys (1): blocks.0.extra.weight" in message
    assert "norm.bias (checkpoint (5,), model (24,))" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), "nothing may be half-loaded"


def test_checkpoint_of_another_model_is_refused(tmp_path):
    save_file(
        vitlab.create_model("deit_tiny_distilled_patch16_224", depth=1, img_size=32).state_dict(),
        tmp_path / "deit.safetensors",
    )
    with pytest.raises(CheckpointError, match="unexpected keys .*dist_token"):
        load_checkpoint(tiny(embed_dim=192, num_heads=3, num_classes=1000), tmp_path / "deit.safetensors")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("corrupt.safetensors", b"\x00\x01garbage", "not a valid safetensors file"),
        ("corrupt.pth", b"not a zip", "not a readable PyTorch checkpoint"),
        ("weights.h5", b"", "unknown checkpoint format"),
        ("bad.npz", b"nope", "not a readable .npz"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(tiny(), tmp_path / name)
    assert name in str(err.value)


def test_missing_file_and_non_tensor_content(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tiny(), tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not tensors"):
        extract_state_dict({"epoch": 1, "lr": 0.1}, "x.pth")


def test_checkpoint_for_another_input_size_is_resized(tmp_path):
    source = tiny(img_size=32)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    target = tiny(img_size=64)
    load_checkpoint(target, tmp_path / "w.safetensors")
    assert target.pos_embed.shape == (1, 17, 24)
    assert torch.equal(target.cls_token, source.cls_token)
    # Resizing at load time and on the fly agree.
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)


def test_new_number_of_classes_reinitialises_the_head_with_a_warning(tmp_path):
    source = tiny(num_classes=10)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    with pytest.warns(UserWarning, match=r"classifier head\.weight has shape \(10, 24\), the model \(3, 24\)"):
        model = vitlab.create_model(
            "vit_small_patch16_224",
            pretrained=tmp_path / "w.safetensors",
            embed_dim=24,
            depth=1,
            num_heads=2,
            img_size=32,
            num_classes=3,
        )
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    with pytest.raises(CheckpointError, match="classifier for 10 classes, the model 3: pass num_classes=10"):
        load_checkpoint(tiny(num_classes=3), tmp_path / "w.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vitlab.create_model(
            "vit_small_patch16_224",
            pretrained=tmp_path / "w.safetensors",
            embed_dim=24,
            depth=1,
            num_heads=2,
            img_size=32,
            num_classes=10,
        )


def test_class_names_are_read_from_metadata_torch_and_hf_config(tmp_path):
    save_file({"x": torch.zeros(1)}, tmp_path / "a.safetensors", metadata={"class_names": '["cat", "dog"]'})
    assert read_class_names(tmp_path / "a.safetensors") == ["cat", "dog"]
    torch.save({"model": {"x": torch.zeros(1)}, "class_names": ["a", "b", "c"]}, tmp_path / "b.pth")
    assert read_class_names(tmp_path / "b.pth") == ["a", "b", "c"]
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"x": torch.zeros(1)}, hf / "model.safetensors")
    (hf / "config.json").write_text('{"id2label": {"1": "two", "0": "one", "10": "eleven"}}')
    assert read_class_names(hf / "model.safetensors") == ["one", "two", "eleven"]


def test_jax_npz_files_load(tmp_path):
    """The .npz reader keeps arrays without pickling; layout conversion is checked by the parity fixture."""
    from tests.parity.test_fixtures import FIXTURES, read_fixture

    (path,) = [p for p in FIXTURES if p.stem == "vit_small_patch16_224-jax"]
    _, state, _, _ = read_fixture(path)
    np.savez(tmp_path / "vit.npz", **{k: v.numpy() for k, v in state.items()})
    model = vitlab.create_model(
        "vit_small_patch16_224", embed_dim=48, depth=2, num_heads=3, img_size=64, num_classes=10
    )
    assert load_checkpoint(model, tmp_path / "vit.npz") == "jax"
    assert os.path.getsize(tmp_path / "vit.npz") > 0
