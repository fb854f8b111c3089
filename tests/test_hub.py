"""Published weights, fetched from a local HTTP server that plays the Hugging Face hub and a release site.

The hub side answers what `huggingface_hub.hf_hub_download` asks (HEAD then GET on
`/{repo}/resolve/{revision}/{filename}`, with `X-Repo-Commit`, `ETag` = the file's SHA-256 as for
LFS files, `Content-Length`, HTTP Range); `HF_ENDPOINT` points at it and `HF_HOME` at a fresh
folder. The files are small: tiny configurations of real variants, in timm's layout (hub), the
official release's (.pth with EMA weights) and HF transformers' (a parity fixture's weights).
"""

import dataclasses
import hashlib
import http.server
import json
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.parity.test_fixtures import FIXTURES, read_fixture
from vitlab import registry
from vitlab.checkpoint import CheckpointError
from vitlab.cli import main
from vitlab.weights import Weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head><body>...</body></html>\n"
DEIT = "deit_tiny_patch16_224"
DEIT_TINY = dict(embed_dim=32, depth=2, num_heads=2)
CSWIN_TINY = dict(embed_dim=16, depth=(1, 1, 1, 1), num_heads=(2, 2, 4, 4))


class Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]  # URL path -> body
    etags: dict[str, str]  # URL path -> the SHA-256 the hub states (default: the body's)
    html: set[str]  # URL paths answered with a sign-in page
    cut_once: set[str]  # URL paths whose next GET closes the connection half-way
    log: list[tuple[str, str, str | None]]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        path = urllib.parse.urlparse(self.path).path
        srv = self.server
        srv.log.append((self.command, path, self.headers.get("Range")))
        if path in srv.html:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(HTML)))
            self.end_headers()
            if body:
                self.wfile.write(HTML)
            return
        if path not in srv.files:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files[path]
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{srv.etags.get(path) or hashlib.sha256(data).hexdigest()}"')
        self.end_headers()
        if not body:
            return
        if path in srv.cut_once:
            srv.cut_once.discard(path)
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = Server(("127.0.0.1", 0), Handler)
    srv.files, srv.etags, srv.html, srv.cut_once, srv.log = {}, {}, set(), set(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "vitlab"))
    for name in ("HF_HUB_OFFLINE", "VITLAB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    yield srv
    srv.shutdown()
    srv.server_close()


def safetensors_bytes(state: dict[str, torch.Tensor], tmp_path: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "tmp.safetensors")
    return (tmp_path / "tmp.safetensors").read_bytes()


def hub_path(repo: str, filename: str = "model.safetensors") -> str:
    return f"/{repo}/resolve/main/{filename}"


def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in state)


def with_weights(monkeypatch, name: str, *weights: Weights) -> None:
    """Give a registered variant other published weights for one test."""
    entry = registry.get_entry(name)
    monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(entry, weights=tuple(weights)))


def file_requests(server: Server) -> list[tuple[str, str, str | None]]:
    """The requests for files (huggingface_hub also asks its API for other things)."""
    return [r for r in server.log if "/resolve/" in r[1] or r[1].startswith("/releases/")]


def blobs(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and "blobs" in p.parts]


# The hub (timm's files).
def serve_deit(server, tmp_path) -> dict[str, torch.Tensor]:
    state = vitlab.create_model(DEIT, **DEIT_TINY).state_dict()
    server.files[hub_path(f"timm/{DEIT}.fb_in1k")] = safetensors_bytes(state, tmp_path)
    return state


def test_hub_download_loads_names_the_classes_and_then_works_offline(server, tmp_path, monkeypatch):
    state = serve_deit(server, tmp_path)
    model = vitlab.create_model(f"{DEIT}.fb_in1k", pretrained=True, **DEIT_TINY)
    assert same_weights(model, state)
    assert model.class_names[0].startswith("tench") and model.class_names[967] == "espresso"
    assert model.pretrained_weights.tag == "fb_in1k"
    assert [m for m, *_ in file_requests(server)] == ["HEAD", "GET"]
    assert (tmp_path / "hf" / "hub" / f"models--timm--{DEIT}.fb_in1k").is_dir()  # HF_HOME honoured
    server.log.clear()
    assert same_weights(vitlab.create_model(DEIT, pretrained=True, **DEIT_TINY), state)  # default tag, cached
    assert file_requests(server) == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server.files.clear()
    assert same_weights(vitlab.create_model(DEIT, pretrained=True, **DEIT_TINY), state)


def test_hub_offline_and_not_cached_says_so(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline") as err:
        vitlab.create_model(DEIT, pretrained=True, **DEIT_TINY)
    assert f"timm/{DEIT}.fb_in1k" in str(err.value) and file_requests(server) == []


def test_hub_file_with_another_hash_is_refused_and_not_cached(server, tmp_path):
    serve_deit(server, tmp_path)
    server.etags[hub_path(f"timm/{DEIT}.fb_in1k")] = "ab" * 32
    with pytest.raises(CheckpointError, match="SHA-256 mismatch") as err:
        vitlab.create_model(DEIT, pretrained=True, **DEIT_TINY)
    assert "abab" in str(err.value) and f"{server.url}/timm/{DEIT}.fb_in1k" in str(err.value)
    assert blobs(tmp_path) == []


def test_hub_answering_html_names_the_url_and_what_came_back(server, tmp_path):
    server.html.add(hub_path(f"timm/{DEIT}.fb_in1k"))
    with pytest.raises(CheckpointError, match="HTML") as err:
        vitlab.create_model(DEIT, pretrained=True, **DEIT_TINY)
    assert f"{server.url}/timm/{DEIT}.fb_in1k/resolve/main/model.safetensors" in str(err.value)
    assert "Sign in" in str(err.value) and blobs(tmp_path) == []


def test_hub_download_cut_half_way_is_retried_and_leaves_no_partial_file(server, tmp_path):
    state = serve_deit(server, tmp_path)
    server.cut_once.add(hub_path(f"timm/{DEIT}.fb_in1k"))
    assert same_weights(vitlab.create_model(DEIT, pretrained=True, **DEIT_TINY), state)
    assert [m for m, *_ in file_requests(server)] == ["HEAD", "GET", "GET"]
    assert not [p for p in (tmp_path / "hf").rglob("*") if p.name.endswith(".incomplete")]


@pytest.mark.parametrize("fixture", ["pvt_tiny-hf", "mit_b0-hf", "segformer_b0-hf"])
def test_hf_layout_weights_on_the_hub_reproduce_the_reference(server, tmp_path, fixture):
    """A registered HF-layout release (pytorch_model.bin + config.json), served with a parity fixture's
    tiny weights and config: fetched, built from its config, converted, it gives the reference's output."""
    (path,) = [p for p in FIXTURES if p.stem == fixture]
    meta, state, inputs, expected = read_fixture(path)
    name = meta["model"]
    weights = registry.get_entry(name).weights[0]
    assert weights.layout == "hf" and weights.filename == "pytorch_model.bin"
    torch.save({k: v.contiguous() for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    server.files[hub_path(weights.hf_hub_id, "pytorch_model.bin")] = (tmp_path / "pytorch_model.bin").read_bytes()
    server.files[hub_path(weights.hf_hub_id, "config.json")] = meta["hf_config"].encode()
    model = vitlab.create_model(name, pretrained=True, **json.loads(meta["kwargs"])).double().eval()
    with torch.no_grad():
        actual = model(inputs.double())
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    print(f"\n{fixture} through pretrained=True: max relative error {error:.2e}")
    assert error < 1e-8
    labels = json.loads(meta["hf_config"]).get("id2label")
    if labels:
        assert model.class_names == [labels[str(i)] for i in range(len(labels))]


# Release URLs (the official .pth files): the vitlab cache and its own downloader.
def serve_cswin(server, tmp_path, monkeypatch, sha256: str | None = "auto") -> dict[str, torch.Tensor]:
    ema = vitlab.create_model("cswin_tiny_224", **CSWIN_TINY).state_dict()
    other = {k: torch.zeros_like(v) for k, v in ema.items()}
    torch.save({"model": other, "state_dict_ema": ema, "epoch": 300}, tmp_path / "release.pth")
    data = (tmp_path / "release.pth").read_bytes()
    server.files["/releases/cswin_tiny_224.pth"] = data
    digest = hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256
    weights = Weights(
        "in1k", url=f"{server.url}/releases/cswin_tiny_224.pth", layout="official", ema=True, sha256=digest
    )
    with_weights(monkeypatch, "cswin_tiny_224", weights)
    return ema


def test_release_download_takes_the_ema_weights_and_then_works_offline(server, tmp_path, monkeypatch):
    ema = serve_cswin(server, tmp_path, monkeypatch)
    assert same_weights(vitlab.create_model("cswin_tiny_224", pretrained=True, **CSWIN_TINY), ema)
    cached = tmp_path / "vitlab" / "cswin_tiny_224.in1k" / "cswin_tiny_224.pth"
    assert cached.read_bytes() == server.files["/releases/cswin_tiny_224.pth"]
    monkeypatch.setenv("VITLAB_OFFLINE", "1")
    server.files.clear()
    assert same_weights(vitlab.create_model("cswin_tiny_224.in1k", pretrained=True, **CSWIN_TINY), ema)


def test_interrupted_release_download_leaves_only_a_part_file_and_resumes(server, tmp_path, monkeypatch):
    ema = serve_cswin(server, tmp_path, monkeypatch)
    server.cut_once.add("/releases/cswin_tiny_224.pth")
    folder = tmp_path / "vitlab" / "cswin_tiny_224.in1k"
    with pytest.raises(CheckpointError, match="interrupted|stopped after"):
        vitlab.create_model("cswin_tiny_224", pretrained=True, **CSWIN_TINY)
    assert [p.name for p in folder.iterdir()] == ["cswin_tiny_224.pth.part"]
    half = (folder / "cswin_tiny_224.pth.part").stat().st_size
    assert 0 < half < len(server.files["/releases/cswin_tiny_224.pth"])
    assert same_weights(vitlab.create_model("cswin_tiny_224", pretrained=True, **CSWIN_TINY), ema)
    assert server.log[-1] == ("GET", "/releases/cswin_tiny_224.pth", f"bytes={half}-")
    assert [p.name for p in folder.iterdir()] == ["cswin_tiny_224.pth"]


def test_release_with_another_hash_is_refused_and_nothing_cached(server, tmp_path, monkeypatch):
    serve_cswin(server, tmp_path, monkeypatch, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="SHA-256 mismatch, the registry records 0000"):
        vitlab.create_model("cswin_tiny_224", pretrained=True, **CSWIN_TINY)
    assert list((tmp_path / "vitlab" / "cswin_tiny_224.in1k").iterdir()) == []


@pytest.mark.parametrize("content_type", ["text/html", "application/octet-stream"])
def test_release_url_answering_html_is_named(server, tmp_path, monkeypatch, content_type):
    serve_cswin(server, tmp_path, monkeypatch, sha256=None)
    if content_type == "text/html":
        server.html.add("/releases/cswin_tiny_224.pth")
    else:
        server.files["/releases/cswin_tiny_224.pth"] = HTML
    with pytest.raises(CheckpointError, match="HTML page") as err:
        vitlab.create_model("cswin_tiny_224", pretrained=True, **CSWIN_TINY)
    assert f"{server.url}/releases/cswin_tiny_224.pth" in str(err.value)
    assert list((tmp_path / "vitlab" / "cswin_tiny_224.in1k").iterdir()) == []


def test_release_offline_and_not_cached_names_the_url_and_the_place(server, tmp_path, monkeypatch):
    serve_cswin(server, tmp_path, monkeypatch)
    monkeypatch.setenv("VITLAB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline and not cached") as err:
        vitlab.create_model("cswin_tiny_224", pretrained=True, **CSWIN_TINY)
    assert str(tmp_path / "vitlab" / "cswin_tiny_224.in1k" / "cswin_tiny_224.pth") in str(err.value)
    assert file_requests(server) == []


@pytest.mark.parametrize("fixture", ["segmenter_tiny_mask-official", "cswin_tiny_224-official"])
def test_registered_release_files_reproduce_the_reference(server, tmp_path, monkeypatch, fixture):
    """A registered release URL (same path, on the local server) serving a training checkpoint that wraps a
    parity fixture's weights (under `state_dict_ema` where the release is evaluated with its EMA)."""
    (path,) = [p for p in FIXTURES if p.stem == fixture]
    meta, state, inputs, expected = read_fixture(path)
    (published,) = registry.get_entry(meta["model"]).weights
    wrapper = "state_dict_ema" if published.ema else "model"
    torch.save({wrapper: state, "epoch": 1}, tmp_path / "release.pth")
    url = urllib.parse.urlparse(published.url)
    server.files[url.path] = (tmp_path / "release.pth").read_bytes()
    with_weights(monkeypatch, meta["model"], dataclasses.replace(published, url=f"{server.url}{url.path}"))
    model = vitlab.create_model(meta["model"], pretrained=True, **json.loads(meta["kwargs"])).double().eval()
    with torch.no_grad():
        actual = model(inputs.double())
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    print(f"\n{fixture} through pretrained=True: max relative error {error:.2e}")
    assert error < 1e-8


def test_share_link_release_is_cached_under_the_name_its_reader_needs(server, tmp_path, monkeypatch):
    (published,) = registry.get_entry("hornet_tiny_7x7").weights
    link = urllib.parse.urlparse(published.url)  # https://cloud.tsinghua.edu.cn/f/<id>/?dl=1
    tiny = dict(base_dim=8, depths=(1, 1, 1, 1))
    state = vitlab.create_model("hornet_tiny_7x7", **tiny).state_dict()
    torch.save({"model": state}, tmp_path / "release.pth")
    server.files[link.path] = (tmp_path / "release.pth").read_bytes()
    with_weights(monkeypatch, "hornet_tiny_7x7", dataclasses.replace(published, url=f"{server.url}{link.path}?dl=1"))
    assert same_weights(vitlab.create_model("hornet_tiny_7x7", pretrained=True, **tiny), state)
    assert (tmp_path / "vitlab" / "hornet_tiny_7x7.in1k" / "hornet_tiny_7x7.pth").is_file()


# The command line.
def test_predict_pretrained_prints_imagenet_names(server, tmp_path, capsys):
    from PIL import Image

    state = vitlab.create_model(DEIT).state_dict()
    server.files[hub_path(f"timm/{DEIT}.fb_in1k")] = safetensors_bytes(state, tmp_path)
    Image.new("RGB", (40, 30), (200, 120, 40)).save(tmp_path / "a.png")
    assert main(["predict", "--model", DEIT, "--pretrained", "--top", "3", str(tmp_path / "a.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = vitlab.weights.imagenet_class_names()
    assert len(lines) == 4 and all(f"class {int(line.split('class ')[1].split()[0])}  " in line for line in lines[1:])
    assert all(names[int(line.split("class ")[1].split()[0])] in line for line in lines[1:])


def test_predict_needs_a_checkpoint_or_pretrained(capsys):
    assert main(["predict", "--model", DEIT, "x.png"]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert main(["predict", "--model", "pale_tiny_224", "--pretrained", "x.png"]) == 2
    assert "no published weights are known for pale_tiny_224" in capsys.readouterr().err


def test_hub_settings_are_read_when_a_file_is_fetched_not_at_import(server, tmp_path, monkeypatch):
    """huggingface_hub fixes HF_ENDPOINT / HF_HOME when imported (an earlier test imported it with another
    server's address): a later setting must still decide where vitlab fetches and caches."""
    import huggingface_hub.constants

    stale = "http://127.0.0.1:9"  # nothing listens there
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", stale)
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", stale + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    state = serve_deit(server, tmp_path)
    assert same_weights(vitlab.create_model(DEIT, pretrained=True, **DEIT_TINY), state)
    assert (tmp_path / "hf" / "hub" / f"models--timm--{DEIT}.fb_in1k").is_dir()
    assert not (tmp_path / "elsewhere").exists()


def test_models_lists_weights(capsys, monkeypatch):
    import vitlab.analysis.complexity

    counted = dict(input_size=(3, 224, 224), params=5.7e6, gmacs=1.3, reference="ViT")  # counting is tested elsewhere
    monkeypatch.setattr(vitlab.analysis.complexity, "model_info", lambda name: counted)
    assert main(["models", "--pretrained", "deit_tiny*"]) == 0
    out = capsys.readouterr().out
    assert f"{DEIT}.fb_in1k" in out and f"https://huggingface.co/timm/{DEIT}.fb_in1k" in out
    assert main(["models", "vit_tiny_patch16_224"]) == 0
    assert "augreg_in21k_ft_in1k (timm) +1" in capsys.readouterr().out
