"""Fetching published weights: the Hugging Face hub's cache for hub files, an atomic downloader for the rest.

Hub files (`Weights.hf_hub_id`) go through `huggingface_hub.hf_hub_download`, so they share the
cache every HF library uses and honour `HF_HOME` / `HF_HUB_CACHE` (where), `HF_ENDPOINT` (a mirror)
and `HF_HUB_OFFLINE=1` (never touch the network); these are read when a file is fetched, not when
vitlab is imported. A file already in the cache is used without contacting the hub. A fresh hub
download is checked against the SHA-256 the hub reports for it (an LFS file's ETag, which names
its blob in the cache) and against the release's own hash where the registry records one; a file
that fails either check, or that is an HTML page, is removed from the cache before the error.

Other URLs (official releases) are downloaded into `$VITLAB_CACHE` (default `~/.cache/vitlab`),
`<variant>.<tag>/<file name>`, through `download`: the bytes go to `<file>.part`, which an
interrupted download leaves behind and the next attempt resumes (HTTP Range) or restarts; only a
complete file that passes its checks is renamed to its final name. `VITLAB_OFFLINE=1` (or
`HF_HUB_OFFLINE=1`) uses the cache only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

from vitlab.checkpoint import TORCH_SUFFIXES, CheckpointError
from vitlab.weights import Weights

CHUNK = 1 << 20
_HTML_STARTS = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")


def cache_dir() -> Path:
    """Where weights from plain URLs are kept: `$VITLAB_CACHE`, else `$XDG_CACHE_HOME/vitlab` or ~/.cache/vitlab."""
    root = os.environ.get("VITLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitlab"
    return Path(root)


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    """Whether the network is off limits: `VITLAB_OFFLINE=1` or `HF_HUB_OFFLINE=1`."""
    return _true(os.environ.get("VITLAB_OFFLINE")) or _true(os.environ.get("HF_HUB_OFFLINE"))


def fetch_weights(name: str, weights: Weights) -> Path:
    """The local path of `weights` (of variant `name`), from the cache or downloaded into it."""
    if weights.hf_hub_id is None:
        return _fetch_url(name, weights)
    path = _fetch_from_hub(name, weights)
    if weights.config_file is not None:  # the same commit's snapshot folder: inspect_checkpoint finds it beside
        _fetch_from_hub(name, replace(weights, filename=weights.config_file, sha256=None, size=None))
    return path


def _hub_cache() -> str:
    """huggingface_hub's cache folder, by its rules, from the environment as it is now.

    (huggingface_hub reads the variables once, when it is imported; passing the folder and the
    endpoint explicitly makes a later change of HF_HOME or HF_ENDPOINT count.)
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def _hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_url(weights: Weights) -> str:
    """The address of a hub file, at `$HF_ENDPOINT` when set."""
    return f"{_hub_endpoint()}/{weights.hf_hub_id}/resolve/main/{weights.filename}"


def _fetch_from_hub(name: str, weights: Weights) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    options = dict(
        repo_id=weights.hf_hub_id,
        filename=weights.filename,
        cache_dir=_hub_cache(),
        endpoint=_hub_endpoint(),
        library_name="vitlab",
    )
    try:
        return Path(hf_hub_download(**options, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    url = hub_url(weights)
    if offline():
        raise CheckpointError(
            f"{name}.{weights.tag}: offline (HF_HUB_OFFLINE / VITLAB_OFFLINE) and {weights.hf_hub_id}/"
            f"{weights.filename} is not in the hub cache ({_hub_cache()}); "
            f"fetch {url} once while online"
        )
    try:
        path = Path(hf_hub_download(**options))
    except Exception as err:  # huggingface_hub raises many kinds (HTTP, metadata, connection): all mean "not here"
        raise CheckpointError(
            f"{name}.{weights.tag}: could not download {url}: {_first_line(err)}{what_came_back(url)}"
        ) from err
    try:
        blob = path.resolve()
        hub_sha = blob.name if len(blob.name) == 64 and _is_hex(blob.name) else None
        check_file(blob, url, sha256=weights.sha256, size=weights.size, hub_sha256=hub_sha)
    except CheckpointError:
        for stale in {path.resolve(), path}:
            stale.unlink(missing_ok=True)
        raise
    return path


def what_came_back(url: str) -> str:
    """For an error message: what `url` answers when it is not what the hub client expects ("" if nothing)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=0-199"}), timeout=10) as r:
            kind, head = r.headers.get("Content-Type", "?"), r.read(200)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError):
        return ""
    text = head.lstrip()[:80].decode("utf-8", "replace").replace("\n", " ")
    page = "an HTML page" if head.lstrip().lower().startswith(_HTML_STARTS) or "html" in kind else kind
    return f"; it answers with {page} (Content-Type {kind}), beginning {text!r}"


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _fetch_url(name: str, weights: Weights) -> Path:
    url = str(weights.url)
    filename = Path(urllib.parse.urlparse(url).path).name
    if not filename.endswith((*TORCH_SUFFIXES, ".safetensors", ".npz")):  # a share link: the name picks the reader
        filename = weights.filename
    path = cache_dir() / f"{name}.{weights.tag}" / filename
    if path.is_file():
        return path
    if offline():
        raise CheckpointError(f"{name}.{weights.tag}: offline and not cached. Download {url} and save it as {path}")
    try:
        download(url, path, sha256=weights.sha256, size=weights.size)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise CheckpointError(
            f"{name}.{weights.tag}: could not download {url} ({err}). Download it by other means and save it as {path}"
        ) from err
    return path


def download(
    url: str, path: Path, *, sha256: str | None = None, size: int | None = None, timeout: float = 60.0
) -> None:
    """Fetch `url` into `path`; a partial or unchecked file never takes the final name.

    Bytes go to `path` + ".part". A `.part` left by an interrupted attempt is resumed with an HTTP
    Range request (restarted if the server answers with the whole file). When complete, the file
    is checked (`check_file`: not HTML, the size and SHA-256 when known, a readable safetensors
    header) and renamed; a file that fails is deleted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    done = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not done:  # 416: the range is past the end; start over
            raise
        part.unlink()
        done, response = 0, urllib.request.urlopen(url, timeout=timeout)
    with response:
        if done and response.status != 206:
            done = 0  # the server ignored the range: the whole file follows
        kind = response.headers.get("Content-Type", "")
        if kind.split(";")[0].strip().lower() == "text/html":
            raise CheckpointError(f"{url} answered with an HTML page (Content-Type {kind}), not a weights file")
        length = response.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else size
        _stream(response, part, done, total, url)
    try:
        check_file(part, url, sha256=sha256, size=size)
    except CheckpointError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, path)


def _stream(response: http.client.HTTPResponse, part: Path, done: int, total: int | None, url: str) -> None:
    """Append the response body to `part` (from byte `done`), with a progress bar; complain if it stops short."""
    from tqdm.auto import tqdm

    desc = Path(urllib.parse.urlparse(url).path).name
    with open(part, "ab" if done else "wb") as f, tqdm(
        total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False
    ) as bar:  # fmt: skip
        try:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            f.flush()
            raise CheckpointError(
                f"the download of {url} was interrupted after {f.tell()} bytes ({_first_line(err)}); {part} "
                "keeps them and the next attempt resumes"
            ) from err
        got = f.tell()
        f.flush()
        os.fsync(f.fileno())
    if total is not None and got < total:
        raise CheckpointError(
            f"the download of {url} stopped after {got} of {total} bytes; {part} keeps them and the next "
            "attempt resumes"
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(
    path: Path, url: str, *, sha256: str | None = None, size: int | None = None, hub_sha256: str | None = None
) -> None:
    """Refuse a downloaded file that is an HTML page, has the wrong size or hash, or is a broken safetensors file."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip().lower().startswith(_HTML_STARTS):
        snippet = head.lstrip()[:80].decode("utf-8", "replace").replace("\n", " ")
        raise CheckpointError(f"{url} answered with an HTML page, not a weights file (it begins {snippet!r})")
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise CheckpointError(f"{url} gave {actual} bytes, the release states {size}; nothing was cached")
    if sha256 is not None or hub_sha256 is not None:
        digest = sha256_of(path)
        for expected, who in ((sha256, "the registry records"), (hub_sha256, "the hub states")):
            if expected is not None and digest != expected.lower():
                raise CheckpointError(
                    f"{url}: SHA-256 mismatch, {who} {expected}, the file has {digest}; nothing was cached"
                )
    if url.endswith(".safetensors") or path.name.endswith(".safetensors.part"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{url} did not give a valid safetensors file: {err}") from err
