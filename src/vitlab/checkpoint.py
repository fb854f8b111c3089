"""Loading checkpoints safely, in whatever layout users have them.

Files are read without ever unpickling arbitrary objects: `.safetensors` through safetensors,
`.pth/.pt/.bin/.ckpt/.tar` through `torch.load(weights_only=True)`, JAX `.npz` through numpy with
pickling disabled. The state dict is then unwrapped (`model`, `state_dict`, EMA, `module.`),
converted from its layout (HF transformers, official releases, JAX) to vitlab's by the converter
the model's family registers, adapted to the model's input size, and loaded strictly: any
missing, unexpected or mis-shaped key is an error that lists them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
WRAPPER_KEYS = ("model", "state_dict", "module", "model_state")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


# Reading files.
def read_checkpoint(path: str | Path) -> Any:
    """The raw content of a checkpoint file: a mapping of names to tensors, possibly nested."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from err
    if name.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {key: torch.from_numpy(np.array(arrays[key])) for key in arrays.files}
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise CheckpointError(f"{path} is not a readable .npz of arrays: {err}") from err
    if name.endswith(TORCH_SUFFIXES):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            if found is None:
                raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(err)}") from err
            raise CheckpointError(
                f"refused to load {path}: it contains a pickled {found.group(1)}, not only tensors and plain "
                f"containers, and unpickling it could run arbitrary code. Re-save only the state dict "
                f"(torch.save(model.state_dict(), ...)) or convert it to .safetensors."
            ) from err
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(err)}") from err
    raise CheckpointError(
        f"{path}: unknown checkpoint format; expected .safetensors, .npz or one of {', '.join(TORCH_SUFFIXES)}"
    )


def _first_line(err: BaseException) -> str:
    return next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)


def extract_state_dict(obj: Any, source: str = "checkpoint", use_ema: bool = False) -> StateDict:
    """Unwrap the usual nesting (`model`, `state_dict`, EMA copies) and `module.` prefixes.

    With `use_ema` the EMA weights are taken and their absence is an error.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a mapping of names to tensors")
    if use_ema:
        key = next((k for k in EMA_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise CheckpointError(f"{source} has no EMA weights (looked for {', '.join(EMA_KEYS)})")
        obj = obj[key]
    while not all(isinstance(v, Tensor) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            bad = [k for k, v in obj.items() if not isinstance(v, Tensor)][:5]
            raise CheckpointError(
                f"{source}: could not find the weights: entries {bad} are not tensors and none of "
                f"{WRAPPER_KEYS} holds a state dict"
            )
        obj = obj[key]
    state_dict = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


# Layout conversion.
@dataclass(frozen=True)
class Converter:
    layout: str
    detect: Callable[[StateDict], bool]
    convert: Callable[[StateDict, nn.Module], StateDict]


_CONVERTERS: dict[type, list[Converter]] = {}


def register_converter(model_cls: type, layout: str, detect: Callable[[StateDict], bool]):
    """Declare `fn(state_dict, model) -> state_dict` as the converter of `layout` for a model class.

    `detect(state_dict)` says whether a state dict is in that layout, from its key names.
    """

    def wrap(fn: Callable[[StateDict, nn.Module], StateDict]):
        _CONVERTERS.setdefault(model_cls, []).append(Converter(layout, detect, fn))
        return fn

    return wrap


def convert_state_dict(model: nn.Module, state_dict: StateDict) -> tuple[StateDict, str]:
    """Convert to the model's native layout; returns the converted dict and the layout found."""
    for cls in type(model).__mro__:
        for converter in _CONVERTERS.get(cls, []):
            if converter.detect(state_dict):
                return converter.convert(state_dict, model), converter.layout
    return state_dict, "native"


def rename_keys(state_dict: StateDict, rules: list[tuple[str, str]]) -> StateDict:
    """Rename keys with regular-expression rules; the first matching rule wins, unmatched keys stay."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in compiled:
            new_key, count = pattern.subn(replacement, key, count=1)
            if count:
                key = new_key
                break
        renamed[key] = value
    return renamed


def fuse_qkv(state_dict: StateDict, names: tuple[str, str, str] = ("q", "k", "v"), fused: str = "qkv") -> StateDict:
    """Concatenate separate `X.q.*`, `X.k.*`, `X.v.*` projections into one `X.qkv.*` (q, k, v order)."""
    out = dict(state_dict)
    q_suffix = f".{names[0]}."
    for key in [k for k in state_dict if q_suffix in k]:
        stem, param = key.rsplit(q_suffix, 1)
        parts = [f"{stem}.{n}.{param}" for n in names]
        if not all(p in state_dict for p in parts):
            continue
        out[f"{stem}.{fused}.{param}"] = torch.cat([state_dict[p] for p in parts], dim=0)
        for part in parts:
            del out[part]
    return out


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _matches_prefix(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def load_state_dict_strict(model: nn.Module, state_dict: StateDict, source: str = "checkpoint") -> None:
    """Load with every key and shape checked first; nothing is loaded when anything is off."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        if mis_shaped:
            lines.append(f"  mis-shaped keys ({len(mis_shaped)}): {_describe(mis_shaped)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    use_ema: bool = False,
    reset_head: bool | str = False,
) -> str:
    """Load a checkpoint file into `model` strictly; returns the layout it was found in.

    `use_ema` takes the EMA weights of a training checkpoint. See `load_state_dict` for the rest.
    """
    state_dict = extract_state_dict(read_checkpoint(path), str(path), use_ema)
    return load_state_dict(model, state_dict, source=str(path), reset_head=reset_head)


def load_state_dict(
    model: nn.Module, state_dict: StateDict, *, source: str = "checkpoint", reset_head: bool | str = False
) -> str:
    """Convert a state dict from its layout, adapt it to the model's size, and load it strictly.

    Returns the layout found ("native", "hf", "official", "jax", ...). `reset_head=True` leaves the
    classifier (the model's `classifier_keys`) as initialised and ignores the checkpoint's; "auto"
    does so only when the classifier shapes differ (fine-tuning on a new label set), with a warning.
    Checkpoints made for another input size are resized by the model's `adapt_state_dict`.
    """
    state_dict, layout = convert_state_dict(model, state_dict)
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        state_dict = adapt(state_dict)
    head = tuple(getattr(model, "classifier_keys", ()))
    notice = None
    if reset_head == "auto":
        own = model.state_dict()
        differs = [
            k for k, v in state_dict.items() if _matches_prefix(k, head) and k in own and own[k].shape != v.shape
        ]
        reset_head = bool(differs)
        if differs:
            differs.sort(key=lambda k: not k.endswith(".weight"))
            notice = (
                f"{source}: classifier {differs[0]} has shape {tuple(state_dict[differs[0]].shape)}, the model "
                f"{tuple(own[differs[0]].shape)}; the classifier is freshly initialised"
            )
    if reset_head:
        if not head:
            raise CheckpointError(f"{type(model).__name__} does not declare classifier_keys to reset")
        state_dict = {k: v for k, v in state_dict.items() if not _matches_prefix(k, head)}
        state_dict.update({k: v for k, v in model.state_dict().items() if _matches_prefix(k, head)})
    load_state_dict_strict(model, state_dict, f"{source} ({layout} layout)")
    if notice:  # only once the rest of the checkpoint has loaded
        warnings.warn(notice, stacklevel=3)
    return layout


def read_class_names(path: str | Path) -> list[str] | None:
    """Class names stored with a checkpoint, if any.

    Looked for in a safetensors file's `class_names` metadata (JSON list), a torch checkpoint's
    `class_names` entry, and an HF `config.json` (`id2label`) beside the file.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, "pt") as f:
                names = (f.metadata() or {}).get("class_names")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from err
        if names:
            return list(json.loads(names))
    elif path.suffix in TORCH_SUFFIXES:
        obj = read_checkpoint(path)
        if isinstance(obj, Mapping) and isinstance(obj.get("class_names"), list | tuple):
            return [str(n) for n in obj["class_names"]]
    config = path.parent / "config.json"
    if config.is_file():
        id2label = json.loads(config.read_text()).get("id2label")
        if id2label:
            return [id2label[k] for k in sorted(id2label, key=int)]
    return None


# Published checkpoints.
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
