"""Published checkpoints: the local cache and atomic downloads."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from vitlab.checkpoint import TORCH_SUFFIXES, CheckpointError


def cache_dir() -> Path:
    root = os.environ.get("VITLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitlab"
    return Path(root)


def resolve_pretrained(entry: Any) -> Path:
    """The local path of a variant's published checkpoint, downloading it into the cache if needed.

    The file keeps the format of the URL (.safetensors unless it names a .pth/.pt/.bin/.ckpt/.tar
    or .npz file). The cache is `$VITLAB_CACHE` (default `~/.cache/vitlab`). `$VITLAB_HUB_ENDPOINT` replaces
    `https://huggingface.co` (for mirrors); `VITLAB_OFFLINE=1` never touches the network.
    """
    suffix = Path(urllib.parse.urlparse(entry.url or "").path).suffix.lower()
    path = cache_dir() / f"{entry.name}{suffix if suffix in (*TORCH_SUFFIXES, '.npz') else '.safetensors'}"
    if path.is_file():
        return path
    if entry.url is None:
        raise CheckpointError(
            f"no published checkpoint is known for {entry.name}; pass the path of one with pretrained=PATH"
        )
    url = entry.url
    endpoint = os.environ.get("VITLAB_HUB_ENDPOINT")
    if endpoint:
        url = url.replace("https://huggingface.co", endpoint.rstrip("/"), 1)
    if os.environ.get("VITLAB_OFFLINE") == "1":
        raise CheckpointError(f"{entry.name}: offline and not cached. Download {url} and save it as {path}")
    try:
        download(url, path)
    except (urllib.error.URLError, OSError) as err:
        raise CheckpointError(
            f"{entry.name}: could not download {url} ({err}). Download it by other means and save it as {path}"
        ) from err
    return path


def download(url: str, path: Path, timeout: float = 60.0) -> None:
    """Fetch `url` into `path` atomically: a partial download never takes the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
            if path.suffix == ".safetensors":  # a truncated or wrong file never enters the cache
                from safetensors import SafetensorError, safe_open

                try:
                    with safe_open(tmp.name, "pt"):
                        pass
                except (SafetensorError, OSError) as err:
                    raise CheckpointError(f"{url} did not give a valid safetensors file: {err}") from err
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
