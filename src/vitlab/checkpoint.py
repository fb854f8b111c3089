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
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.checkpoint_checks import castable, check_finite, nonfinite_allowed, pickled_globals

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
        return _read_torch_file(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint format; expected .safetensors, .npz or one of {', '.join(TORCH_SUFFIXES)}"
    )


# Training scripts save their command-line arguments beside the weights (timm: `args`, an
# argparse.Namespace). They are read as inert stand-ins: their code never runs, the weights load.
INERT_GLOBALS = ("argparse.Namespace",)


class InertObject:
    """What an inert pickled object (see INERT_GLOBALS) becomes: nothing, whatever it held."""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        pass


def _read_torch_file(path: Path) -> Any:
    """`torch.load(weights_only=True)`; a file holding anything but tensors, plain containers and inert
    metadata is refused with the names of what it holds, and nothing in it is ever run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = pickled_globals(path)
        if not found:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(err)}") from err
        refused = [name for name in found if name not in INERT_GLOBALS]
        if refused:
            raise CheckpointError(
                f"refused to load {path}: besides tensors it holds pickled {', '.join(refused)}, which unpickling "
                f"would import and call, running code from the file. vitlab reads only tensors and plain "
                f"containers. Where the file was made, save just the weights: "
                f"torch.save(model.state_dict(), 'weights.pth') or safetensors.torch.save_file(...)"
            ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(err)}") from err
    with torch.serialization.safe_globals([(InertObject, name) for name in found]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(err)}") from err


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
    mis_shaped = [k for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    mistyped = [k for k, v in expected.items() if k in state_dict and not castable(state_dict[k], v)]
    if mistyped and not (missing or unexpected or mis_shaped):
        kinds = [f"{k} ({state_dict[k].dtype}, the model {expected[k].dtype})" for k in mistyped]
        raise CheckpointError(
            f"{source} has tensors of the wrong kind for {type(model).__name__} ({len(mistyped)}): {_describe(kinds)}"
        )
    if not (missing or unexpected or mis_shaped):
        model.load_state_dict(state_dict, strict=True)
        return
    head = tuple(getattr(model, "classifier_keys", ()))
    if not missing and not unexpected and all(_matches_prefix(k, head) for k in mis_shaped):
        theirs, ours = state_dict[mis_shaped[0]].shape[0], expected[mis_shaped[0]].shape[0]
        raise CheckpointError(
            f"{source} has a classifier for {theirs} classes, the model {ours}: pass num_classes={theirs} to use "
            f"it, or num_classes={ours} to train a new classifier from the rest of the checkpoint"
        )
    lines = [f"{source} does not fit {type(model).__name__}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_describe(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
    if mis_shaped:
        shapes = [
            f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})" for k in mis_shaped
        ]
        lines.append(f"  mis-shaped keys ({len(mis_shaped)}): {_describe(shapes)}")
    raise CheckpointError("\n".join(lines))


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    use_ema: bool = False,
    reset_head: bool | str = False,
    contents: Any = None,
    allow_nonfinite: bool | None = None,
) -> str:
    """Load a checkpoint file (or an HF model directory) into `model` strictly; returns its layout.

    `use_ema` takes the EMA weights of a training checkpoint; `contents`, what `read_checkpoint` already
    read of the file (then it is not read again). See `load_state_dict` for the rest.
    """
    path = weights_file(path)
    if contents is None:
        contents = read_checkpoint(path)
    state_dict = extract_state_dict(contents, str(path), use_ema)
    return load_state_dict(model, state_dict, source=str(path), reset_head=reset_head, allow_nonfinite=allow_nonfinite)


def load_state_dict(
    model: nn.Module,
    state_dict: StateDict,
    *,
    source: str = "checkpoint",
    reset_head: bool | str = False,
    allow_nonfinite: bool | None = None,
) -> str:
    """Convert a state dict from its layout, adapt it to the model's size, and load it strictly.

    Returns the layout found ("native", "hf", "official", "jax", ...). `reset_head=True` leaves the
    classifier (the model's `classifier_keys`) as initialised and ignores the checkpoint's; "auto"
    does so only when the classifier shapes differ (fine-tuning on a new label set), with a warning.
    Checkpoints made for another input size are resized by the model's `adapt_state_dict`. NaN or
    infinite weights are refused unless `allow_nonfinite` (default: inside an `allow_nonfinite()` block).
    """
    from vitlab.layouts import convert_state_dict

    if not (nonfinite_allowed() if allow_nonfinite is None else allow_nonfinite):
        check_finite(state_dict, source)

    state_dict, layout = convert_state_dict(model, state_dict)
    state_dict = _adapt_input_channels(model, state_dict)
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


def _adapt_input_channels(model: nn.Module, state_dict: StateDict) -> StateDict:
    """RGB weights for a model asked to take another number of channels (`in_chans=1`): see adapt_input_conv."""
    from vitlab.layers.embed import adapt_input_conv

    key = getattr(model, "input_conv", None)
    weight = state_dict.get(key) if key else None
    in_chans = getattr(model, "in_chans", None)
    if weight is None or weight.ndim != 4 or weight.shape[1] != 3 or in_chans in (None, 3):
        return state_dict
    return {**state_dict, key: adapt_input_conv(weight, in_chans)}


# What a checkpoint says about itself.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "checkpoint-last.pt")


def weights_file(path: str | Path) -> Path:
    """The weights of `path`: the file itself, or in a directory (an HF model, a vitlab run) its weights file."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} is a directory without weights (looked for {', '.join(WEIGHT_FILES)})")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file says about the model it holds, beyond the tensors.

    vitlab files (a run's model.safetensors, its checkpoint-last.pt) name the model, its
    constructor arguments (class count included) and the class names; an HF checkpoint has a
    `config.json` beside it (sizes, LayerNorm eps, labels).
    """

    path: Path
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    hf_config: dict[str, Any] | None = None
    contents: Any = field(default=None, repr=False, compare=False)  # a torch file, read whole to inspect it

    def describe(self) -> str:
        if self.model is None:
            return f"{self.path} does not say which model it holds"
        classes = self.model_args.get("num_classes")
        return f"{self.path} holds a {self.model}" + (f" with {classes} classes" if classes is not None else "")


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Read what `path` (a file or a directory) says about its model, without loading the weights."""
    path = weights_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    model, args, names, contents = None, {}, None, None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from err
        model, args = meta.get("vitlab_model"), tuples_from_json(json.loads(meta.get("vitlab_model_args", "{}")))
        names = json.loads(meta["class_names"]) if "class_names" in meta else None
    elif path.suffix in TORCH_SUFFIXES:
        contents = read_checkpoint(path)
        if isinstance(contents, Mapping):
            config = contents.get("config")
            if isinstance(config, Mapping) and isinstance(contents.get("model_args"), Mapping):
                model, args = config.get("model"), dict(contents["model_args"])
            if isinstance(contents.get("class_names"), list | tuple):
                names = [str(n) for n in contents["class_names"]]
    hf_config = None
    if (path.parent / "config.json").is_file():
        try:
            hf_config = json.loads((path.parent / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path.parent / 'config.json'} is not valid JSON: {err}") from err
        described = _described_by_config(hf_config)
        if described is not None:  # vitlab's or timm's config.json, not HF's
            hf_config = None
            if model is None:
                model, args = described[0], described[1]
            names = names if names is not None else described[2]
        elif names is None and hf_config.get("id2label"):
            from vitlab.layouts.hf import class_names

            names = class_names(hf_config)
    return CheckpointInfo(path, model, args, names, hf_config, contents)


def _described_by_config(config: Any) -> tuple[str | None, dict[str, Any], list[str] | None] | None:
    """(model, constructor overrides, class names) from vitlab's config.json (`save_pretrained`) or timm's;
    None for any other config.json (HF's is read by the family's config reader)."""
    if not isinstance(config, Mapping):
        return None
    if config.get("library") == "vitlab":
        names = config.get("class_names")
        return config.get("model"), tuples_from_json(dict(config.get("model_args") or {})), names
    from vitlab.layouts.timm import is_timm_config, read_timm_config

    return read_timm_config(dict(config)) if is_timm_config(config) else None


def tuples_from_json(value: Any) -> Any:
    """JSON's lists back as the tuples constructors were given (frozen groupings hash their arguments)."""
    if isinstance(value, dict):
        return {k: tuples_from_json(v) for k, v in value.items()}
    return tuple(tuples_from_json(v) for v in value) if isinstance(value, list) else value


def read_class_names(path: str | Path) -> list[str] | None:
    """Class names stored with a checkpoint, if any (see `inspect_checkpoint`)."""
    return inspect_checkpoint(path).class_names
