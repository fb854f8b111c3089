"""Named model variants: `register_model`, `create_model`, `list_models`."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from vitlab.weights import Weights

TASKS = ("image-classification", "semantic-segmentation", "sequence-to-sequence")


@dataclass(frozen=True)
class Preprocess:
    """How a variant's images are prepared: the input size it was trained at and its evaluation transform.

    Evaluation resizes the shorter side to `input_size / crop_pct` with `interpolation`, takes the
    central crop of `input_size`, and normalises with `mean` and `std`.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet's
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @property
    def img_size(self) -> int:
        return self.input_size[1]


IMAGENET = Preprocess()
INCEPTION = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # [-1, 1], as the JAX ViTs were trained


@dataclass(frozen=True)
class ModelEntry:
    """One named variant: what builds it, with which arguments, for which task, trained how.

    `tiny` holds constructor overrides that make a seconds-fast model of the same family (the
    contract test runs every variant through them). `weights` lists the published checkpoints
    (`vitlab.weights.Weights`), the default first.
    """

    name: str
    builder: Callable[..., nn.Module]
    config: dict[str, Any]
    reference: str
    tiny: dict[str, Any]
    task: str = "image-classification"
    preprocess: Preprocess = IMAGENET
    num_classes: int = 1000
    weights: tuple[Weights, ...] = ()
    paper: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str | None:
        """Where the default published checkpoint is (None: none is published)."""
        return self.weights[0].source if self.weights else None


_REGISTRY: dict[str, ModelEntry] = {}


class UnknownModelError(KeyError):
    """A model name that is not registered; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    config: dict[str, Any],
    reference: str,
    *,
    tiny: dict[str, Any],
    **kwargs: Any,
) -> ModelEntry:
    """Add a named variant. `config` is passed to `builder`; `kwargs` fill the other entry fields."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    if "." in name:
        raise ValueError(f"model {name!r}: a name cannot hold '.', which separates a pretrained tag")
    kwargs["weights"] = tuple(kwargs.get("weights", ()))
    entry = ModelEntry(name=name, builder=builder, config=dict(config), reference=reference, tiny=dict(tiny), **kwargs)
    if entry.task not in TASKS:
        raise ValueError(f"model {name!r}: task must be one of {TASKS}, got {entry.task!r}")
    tags = [w.tag for w in entry.weights]
    if len(set(tags)) != len(tags):
        raise ValueError(f"model {name!r}: a weights tag is listed twice in {tags}")
    _REGISTRY[name] = entry
    return entry


def _ensure_models_loaded() -> None:
    import vitlab.models  # noqa: F401  (registers every variant on import)


def list_models(pattern: str = "*", task: str | None = None, pretrained: bool = False) -> list[str]:
    """Names of the registered variants matching a shell-style `pattern` (and `task`, if given), sorted.

    With `pretrained=True`, the names with a pretrained tag (`deit_tiny_patch16_224.fb_in1k`) of
    every published checkpoint, each variant's default first; `pattern` then matches those names.
    """
    _ensure_models_loaded()
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    names = []
    for name in sorted(_REGISTRY):
        entry = _REGISTRY[name]
        if task is not None and entry.task != task:
            continue
        candidates = [f"{name}.{w.tag}" for w in entry.weights] if pretrained else [name]
        names += [n for n in candidates if fnmatch.fnmatch(n, pattern)]
    return names


def get_entry(name: str) -> ModelEntry:
    """The entry of a variant; a pretrained tag (`name.tag`) is accepted and ignored here."""
    _ensure_models_loaded()
    name, _, tag = name.partition(".")
    if tag and name in _REGISTRY and tag not in [w.tag for w in _REGISTRY[name].weights]:
        published = ", ".join(f"{name}.{w.tag}" for w in _REGISTRY[name].weights) or "none"
        raise UnknownModelError(f"{name} has no weights tagged {tag!r}; published: {published}")
    if name not in _REGISTRY:
        lowered = {n.lower(): n for n in _REGISTRY}
        close = [lowered[n] for n in difflib.get_close_matches(name.lower(), lowered, n=5, cutoff=0.6)]
        close += [n for n in _REGISTRY if n.startswith(name.split("_")[0].lower() + "_") and n not in close]
        hint = f"; did you mean {', '.join(close[:8])}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} `vitlab models` lists them all.")
    return _REGISTRY[name]


def create_model(
    name: str,
    pretrained: bool | str | Path | Any = False,
    *,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model by name.

    `pretrained` is False, True (the published checkpoint, from the local cache or downloaded), the
    path of a checkpoint in any layout `load_checkpoint` understands (`checkpoint_path`, as in timm,
    is the same), or what `inspect_checkpoint` read of one (so that it is not read again). The name
    may carry a pretrained tag, as timm's do (`vit_base_patch16_224.augreg_in21k`): `pretrained=True`
    then loads those weights (else the variant's default ones), and the model is built with the
    classifier they hold even without `pretrained`, as in timm. A
    checkpoint that describes its model builds the model to match: a vitlab file applies its stored
    constructor arguments and class count, an HF checkpoint its `config.json` (LayerNorm eps, sizes,
    labels). `overrides` replace the variant's (and the
    file's) constructor arguments (`num_classes`, `img_size`, `in_chans`, `drop_path_rate`, ...);
    asking for another `num_classes` than the checkpoint's re-initialises the classifier (with a
    warning), as fine-tuning on a new label set needs, and a mismatch not asked for is an error.
    With `features_only=True` the result returns a list of NCHW feature maps (see `FeatureExtractor`).
    """
    from vitlab.weights import select_weights, split_tag

    entry = get_entry(name)
    tag = split_tag(name)[1]
    if checkpoint_path is not None:
        if pretrained:
            raise ValueError("pass the checkpoint as pretrained=PATH or checkpoint_path=PATH, not both")
        pretrained = checkpoint_path
    info, source = None, None
    file_args: dict[str, Any] = {}
    weights = select_weights(entry, tag) if pretrained is True or tag is not None else None
    if pretrained and pretrained is not True:
        if tag is not None:
            raise ValueError(f"{name} names published weights; pass pretrained=True, or the plain name with a path")
        from vitlab.checkpoint import CheckpointInfo, inspect_checkpoint

        info = pretrained if isinstance(pretrained, CheckpointInfo) else inspect_checkpoint(pretrained)
        file_args = _file_arguments(entry, info)
    elif pretrained and weights is not None:
        from vitlab.checkpoint import inspect_checkpoint
        from vitlab.hub import fetch_weights

        source = fetch_weights(entry.name, weights)
        file_args = {"num_classes": weights.num_classes}
        if weights.config_file is not None:  # an HF checkpoint: its config.json builds the model to match
            info = inspect_checkpoint(source)
            file_args.update(_file_arguments(entry, info))
    elif weights is not None:
        file_args = {"num_classes": weights.num_classes}
    model = entry.builder(**{**entry.config, **file_args, **overrides})
    model.entry = entry
    model.model_args = {**file_args, **overrides}  # what save_pretrained writes: the variant's config + these
    if pretrained:
        _load_pretrained(model, entry, info, "num_classes" in overrides, weights if source else None, source)
    if features_only:
        from vitlab.features import FeatureExtractor

        return FeatureExtractor(model, out_indices)
    return model


def load_model(path: str | Path, **overrides: Any) -> nn.Module:
    """The model a vitlab file describes (a run's model.safetensors or checkpoint-last.pt, or its directory).

    The file names the model and its constructor arguments, so nothing else is needed:

        model = vitlab.load_model("runs/demo/model.safetensors").eval()
    """
    from vitlab.checkpoint import CheckpointError, inspect_checkpoint

    info = inspect_checkpoint(path)
    if info.model is None:
        raise CheckpointError(
            f"{info.path} does not say which model it holds (not a vitlab file): "
            f"use vitlab.create_model(NAME, pretrained={str(path)!r})"
        )
    return create_model(info.model, pretrained=info, **overrides)


def _file_arguments(entry: ModelEntry, info: Any) -> dict[str, Any]:
    """Constructor arguments a checkpoint states for `entry`: a vitlab file's own, or its HF config's."""
    args: dict[str, Any] = {}
    if info.model == entry.name:
        args = dict(info.model_args)
    elif info.hf_config is not None and isinstance(entry.builder, type):
        from vitlab.layouts import config_overrides

        args = config_overrides(entry.builder, info.hf_config)
    if "num_classes" not in args and info.class_names:
        args["num_classes"] = len(info.class_names)
    return args


def _load_pretrained(
    model: nn.Module, entry: ModelEntry, info: Any, new_classes: bool, weights: Any, source: Path | None
) -> None:
    """Load the published `weights`, fetched to `source`, or the checkpoint `info` describes, into `model`."""
    from vitlab.checkpoint import CheckpointError, load_checkpoint

    reset_head = "auto" if new_classes else False
    try:
        if weights is not None:
            load_checkpoint(model, source, reset_head=reset_head, use_ema=weights.ema)
        else:
            load_checkpoint(model, info.path, reset_head=reset_head, contents=info.contents)
    except CheckpointError as err:
        if weights is not None:
            raise CheckpointError(f"{entry.name}.{weights.tag} ({weights.layout} layout): {err}") from err
        if info.model is not None and info.model != entry.name:
            raise CheckpointError(f"{info.describe()}; you asked for {entry.name}.\n{err}") from err
        raise
    names = info.class_names if info is not None else None
    if weights is not None:
        names = names or weights.class_names()
        model.pretrained_weights = weights  # the transform they expect: weights.preprocess
    if names is not None and len(names) == model.num_classes:
        model.class_names = list(names)
