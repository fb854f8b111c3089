import argparse
import http.server
import os
import threading
import warnings
from functools import partial
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


# Published checkpoints, served from 127.0.0.1 only.
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local HTTP server standing in for the hub; files go under the returned directory."""
    root = tmp_path / "hub"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("VITLAB_HUB_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VITLAB_OFFLINE", raising=False)
    yield root
    server.shutdown()


def hub_path(root: Path, name: str) -> Path:
    entry = vitlab.registry.get_entry(name)
    path = root / entry.url.split("://", 1)[1].split("/", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_pretrained_downloads_into_the_cache_then_works_offline(hub, tmp_path, monkeypatch):
    name = "deit_tiny_patch16_224"
    published = vitlab.create_model(name)
    save_file(published.state_dict(), hub_path(hub, name))
    model = vitlab.create_model(name, pretrained=True)
    assert same_weights(model, published)
    assert (tmp_path / "cache" / f"{name}.safetensors").is_file()
    monkeypatch.setenv("VITLAB_OFFLINE", "1")
    assert same_weights(vitlab.create_model(name, pretrained=True), published)


def test_truncated_download_is_not_cached(hub, tmp_path):
    name = "deit_tiny_patch16_224"
    hub_path(hub, name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    with pytest.raises(CheckpointError, match="did not give a valid safetensors file"):
        vitlab.create_model(name, pretrained=True)
    assert not any((tmp_path / "cache").iterdir())


def test_offline_or_unreachable_says_which_file_to_put_where(hub, tmp_path, monkeypatch):
    name = "deit_tiny_patch16_224"
    expected = tmp_path / "cache" / f"{name}.safetensors"
    with pytest.raises(CheckpointError, match="could not download") as err:  # the server has no such file
        vitlab.create_model(name, pretrained=True)
    assert str(expected) in str(err.value)
    monkeypatch.setenv("VITLAB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline and not cached") as err:
        vitlab.create_model(name, pretrained=True)
    assert str(expected) in str(err.value) and "deit_tiny_patch16_224.fb_in1k" in str(err.value)


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
