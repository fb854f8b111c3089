"""Named model variants: `register_model`, `create_model`, `list_models`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelEntry:
    """One named variant: the class that builds it, its arguments and what it was trained with."""

    name: str
    builder: Callable[..., nn.Module]
    config: dict[str, Any]
    reference: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    url: str | None = None
    paper: dict[str, float] = field(default_factory=dict)
    pretrained_ema: bool = False  # the published file is a training checkpoint: use its EMA weights


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, builder: Callable[..., nn.Module], config: dict[str, Any], reference: str, **kwargs: Any
) -> ModelEntry:
    """Add a named variant. `config` is passed to `builder`; `kwargs` fill the other entry fields."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    entry = ModelEntry(name=name, builder=builder, config=dict(config), reference=reference, **kwargs)
    _REGISTRY[name] = entry
    return entry


def _ensure_models_loaded() -> None:
    import vitlab.models  # noqa: F401  (registers every variant on import)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered variants matching a shell-style `pattern`, sorted."""
    _ensure_models_loaded()
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_entry(name: str) -> ModelEntry:
    _ensure_models_loaded()
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.split("_")[0] in n][:8]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}. `vitlab models` lists them all.")
    return _REGISTRY[name]


def create_model(
    name: str,
    pretrained: bool | str | Path = False,
    *,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model by name.

    `pretrained` is False, True (the published checkpoint, from the local cache or downloaded) or
    the path of a checkpoint in any layout `load_checkpoint` understands; a checkpoint whose
    classifier has another number of classes loads with the head freshly initialised (with a
    warning), as fine-tuning on a new label set needs. `overrides` replace the
    variant's constructor arguments (`num_classes`, `img_size`, `in_chans`, `drop_path_rate`, ...).
    With `features_only=True` the result returns a list of NCHW feature maps (see `FeatureExtractor`).
    """
    entry = get_entry(name)
    config = {**entry.config, **overrides}
    model = entry.builder(**config)
    model.entry = entry
    if pretrained:
        from vitlab.checkpoint import load_checkpoint, resolve_pretrained

        path = resolve_pretrained(entry) if pretrained is True else Path(pretrained)
        load_checkpoint(model, path, reset_head="auto", use_ema=entry.pretrained_ema and pretrained is True)
    if features_only:
        from vitlab.features import FeatureExtractor

        return FeatureExtractor(model, out_indices)
    return model
