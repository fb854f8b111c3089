"""timm's layout in both directions: vitlab -> timm (`vitlab convert --to timm`) and timm's `config.json`.

For the four families timm hosts (ViT/DeiT, Swin, PVT v2, ConViT) vitlab's state dict *is* timm's:
the same names, shapes and persistent buffers (checked against timm 1.0.31 on every registered
variant, `tests/test_convert.py`), so the tensors pass unchanged in both directions. What differs
is the constructor arguments, which timm's `config.json` carries as `model_args`:

- ConViT's `embed_dim`: vitlab's is the model's width, timm's (as the official code's) the width
  per head, multiplied by `num_heads` in its constructor;
- DeiT's distillation token: a vitlab argument (`distilled=True`), a timm class (the
  `deit_*_distilled_*` architectures);
- PVT v2 takes no `img_size` in timm (it has no position table; vitlab's only records it);
- arguments timm has no counterpart for (LayerNorm eps, ViT's similarity, stems, blocks) must keep
  the value timm hard-codes, or the model is refused by name.

A timm directory is what `timm.create_model("local-dir:DIR", pretrained=True)` reads: model.safetensors
and a config.json of `architecture`, `num_classes`, `label_names`, `model_args` and
`pretrained_cfg`. vitlab adds a `vitlab` entry (its model name and arguments), which timm ignores,
so that timm -> vitlab gives back the very variant; without it the architecture must be a vitlab
name, and `model_args` are mapped back.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vitlab.checkpoint import CheckpointError, tuples_from_json
from vitlab.models.convit import ConViT
from vitlab.models.pvt import PyramidVisionTransformerV2
from vitlab.models.swin import SwinTransformer
from vitlab.models.vit import VisionTransformer, vit_block

# Registered vitlab names that timm 1.0.31 registers too (timm.list_models(), checked by a test).
TIMM_NAMES = frozenset(
    [f"convit_{s}" for s in ("tiny", "small", "base")]
    + [f"deit_{s}_patch16_224" for s in ("tiny", "small", "base")]
    + [f"deit_{s}_distilled_patch16_224" for s in ("tiny", "small", "base")]
    + ["deit_base_patch16_384", "deit_base_distilled_patch16_384"]
    + [f"pvt_v2_b{i}" for i in range(6)]
    + ["pvt_v2_b2_li"]
    + [f"swin_{s}_patch4_window7_224" for s in ("tiny", "small", "base", "large")]
    + [f"swin_{s}_patch4_window12_384" for s in ("base", "large")]
    + [f"vit_{s}_patch16_{r}" for s in ("tiny", "small", "base", "large") for r in (224, 384)]
    + [f"vit_{s}_patch32_224" for s in ("small", "base", "large")]
    + ["vit_huge_patch14_224"]
)
_DROPS = ("drop_rate", "attn_drop_rate", "drop_path_rate")


@dataclass(frozen=True)
class TimmFamily:
    """How a vitlab model class maps onto timm's.

    `shared`: constructor arguments with the same name and meaning in both; `fixed`: vitlab
    arguments timm has no counterpart for, with the value timm hard-codes; `recorded`: vitlab
    arguments that change nothing timm computes (dropped on the way to timm); `fallback`: the timm
    architecture of vitlab's own variants (every structural argument is written, so its defaults
    never apply); `per_head`: arguments timm counts per head (ConViT's embed_dim); `unsupported`:
    values of shared arguments timm does not offer; `timm_fixed`: timm arguments vitlab has no
    counterpart for, with the value vitlab's model always has (Swin's and PVT v2's average pooling).
    """

    fallback: str
    shared: tuple[str, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    recorded: tuple[str, ...] = ()
    per_head: tuple[str, ...] = ()
    unsupported: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    timm_fixed: dict[str, Any] = field(default_factory=dict)
    architecture: Callable[[str, dict[str, Any]], str] | None = None


def _vit_architecture(name: str, args: dict[str, Any]) -> str:
    distilled = bool(args.get("distilled"))
    if name in TIMM_NAMES and ("distilled" in name) == distilled:
        return name
    return "deit_base_distilled_patch16_224" if distilled else "vit_base_patch16_224"


_VIT_SHARED = ("img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
               "mlp_ratio", "qkv_bias")  # fmt: skip
FAMILIES: dict[type, TimmFamily] = {
    VisionTransformer: TimmFamily(
        "vit_base_patch16_224",
        (*_VIT_SHARED, "init_values", *_DROPS),
        fixed=dict(norm_eps=1e-6, similarity="dot", embed_layer=None, block_fn=vit_block),
        recorded=("distilled",),
        unsupported=dict(global_pool=("flatten",)),
        architecture=_vit_architecture,
    ),
    SwinTransformer: TimmFamily(
        "swin_base_patch4_window7_224",
        (
            "img_size",
            "patch_size",
            "in_chans",
            "num_classes",
            "embed_dim",
            "depths",
            "num_heads",
            "window_size",
            "mlp_ratio",
            "qkv_bias",
            "proj_drop_rate",
            *_DROPS,
        ),  # fmt: skip
        fixed=dict(norm_eps=1e-5),
        timm_fixed=dict(global_pool="avg"),
    ),
    PyramidVisionTransformerV2: TimmFamily(
        "pvt_v2_b0",
        (
            "in_chans",
            "num_classes",
            "depths",
            "embed_dims",
            "num_heads",
            "sr_ratios",
            "mlp_ratios",
            "qkv_bias",
            "linear",
            "proj_drop_rate",
            *_DROPS,
        ),  # fmt: skip
        fixed=dict(norm_eps=1e-6, embed_norm_eps=1e-5),
        recorded=("img_size",),
        timm_fixed=dict(global_pool="avg"),
    ),
    ConViT: TimmFamily(
        "convit_base",
        (
            "img_size",
            "patch_size",
            "in_chans",
            "num_classes",
            "global_pool",
            "embed_dim",
            "depth",
            "num_heads",
            "mlp_ratio",
            "qkv_bias",
            "local_up_to_layer",
            "locality_strength",
            *_DROPS,
        ),  # fmt: skip
        fixed=dict(norm_eps=1e-6),
        per_head=("embed_dim",),
    ),
}


def timm_family(model_cls: type) -> TimmFamily | None:
    """The timm mapping of a vitlab model class, None where timm has no such model. Subclasses are other
    families (T2T-ViT is a VisionTransformer, MiT a PVT v2) that timm does not have."""
    return FAMILIES.get(model_cls)


def constructor_arguments(builder: Callable[..., Any], config: dict[str, Any]) -> dict[str, Any]:
    """Every argument `builder(**config)` receives: its defaults (a class's, and through `**kwargs` its
    bases'), overridden by `config`."""
    targets = [c.__init__ for c in builder.__mro__ if "__init__" in vars(c)] if isinstance(builder, type) else [builder]
    defaults: dict[str, Any] = {}
    for target in targets:
        params = inspect.signature(target).parameters.values()
        for p in params:
            if p.default is not inspect.Parameter.empty:
                defaults.setdefault(p.name, p.default)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return {**defaults, **config}


def timm_arguments(model: nn.Module, name: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(timm architecture, timm constructor arguments) of the vitlab model `name` built with `config`."""
    family = timm_family(type(model))
    if family is None:
        raise CheckpointError(f"{name} is a {type(model).__name__}, which timm does not have: {no_timm_hint()}")
    args = constructor_arguments(type(model), config)
    for key, value in family.fixed.items():
        if key in args and args[key] != value:
            raise CheckpointError(
                f"{name} has {key}={args[key]!r}; timm's {type(model).__name__} always has {value!r} and no "
                f"argument to change it, so this model cannot be written in timm's layout"
            )
    for key, values in family.unsupported.items():
        if args.get(key) in values:
            raise CheckpointError(f"{name} has {key}={args[key]!r}, which timm's {type(model).__name__} does not offer")
    unknown = sorted(set(args) - set(family.shared) - set(family.fixed) - set(family.recorded))
    if unknown:
        raise CheckpointError(f"{name}: timm has no counterpart for the argument(s) {', '.join(unknown)}")
    out = {k: args[k] for k in family.shared if k in args}
    for key in family.per_head:
        heads = out["num_heads"]
        if out[key] % heads:
            raise CheckpointError(f"{name}: timm needs {key} ({out[key]}) divisible by num_heads ({heads})")
        out[key] //= heads
    architecture = family.architecture(name, args) if family.architecture else None
    return architecture or (name if name in TIMM_NAMES else family.fallback), out


def no_timm_hint() -> str:
    hosted = sorted(cls.__name__ for cls in FAMILIES)
    return f"the families in timm are {', '.join(hosted)}; write it in vitlab's layout (--to vitlab) instead"


def vitlab_arguments(model_cls: type, timm_args: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """vitlab constructor overrides from timm's `model_args`, for a variant whose own `config` is given."""
    family = timm_family(model_cls)
    if family is None:
        raise CheckpointError(f"timm's config.json describes a {model_cls.__name__}, which timm does not have")
    for key, value in family.timm_fixed.items():
        if timm_args.get(key, value) != value:
            raise CheckpointError(f"timm's model_args has {key}={timm_args[key]!r}; vitlab's {model_cls.__name__} "
                                  f"always has {value!r}")  # fmt: skip
    unknown = sorted(set(timm_args) - set(family.shared) - set(family.timm_fixed))
    if unknown:
        raise CheckpointError(f"timm's model_args {', '.join(unknown)} have no counterpart in vitlab's "
                              f"{model_cls.__name__}")  # fmt: skip
    out = tuples_from_json({k: v for k, v in timm_args.items() if k not in family.timm_fixed})
    for key in family.per_head:
        if key in out:
            out[key] *= out.get("num_heads", config.get("num_heads", 1))
    return out


def is_timm_config(config: dict[str, Any]) -> bool:
    """timm's config.json (`save_for_hf`, hub repositories): an `architecture` and a `pretrained_cfg`."""
    return isinstance(config.get("architecture"), str) and isinstance(config.get("pretrained_cfg"), dict)


def read_timm_config(config: dict[str, Any]) -> tuple[str | None, dict[str, Any], list[str] | None]:
    """(vitlab model name or None, its constructor overrides, class names) from timm's config.json."""
    from vitlab.registry import UnknownModelError, get_entry

    labels = config.get("label_names") or config["pretrained_cfg"].get("label_names")
    names = [str(labels[k]) for k in sorted(labels, key=int)] if isinstance(labels, dict) else labels
    names = [str(n) for n in names] if names else None
    own = config.get("vitlab")
    if isinstance(own, dict) and isinstance(own.get("model"), str):
        return own["model"], tuples_from_json(dict(own.get("model_args") or {})), names
    architecture = config["architecture"]
    try:
        entry = get_entry(architecture)
    except UnknownModelError:
        return None, {}, names
    args = vitlab_arguments(entry.builder, config.get("model_args") or {}, entry.config)
    if "num_classes" in config:
        args["num_classes"] = config["num_classes"]
    return architecture, args, names


def timm_config(
    model: nn.Module, name: str, overrides: dict[str, Any], class_names: list[str] | None
) -> dict[str, Any]:
    """timm's config.json for the vitlab model `name` built with `overrides` of its registered config."""
    entry = model.entry
    full = {**entry.config, **overrides}
    architecture, args = timm_arguments(model, name, full)
    pre = entry.preprocess
    size = getattr(model, "img_size", None) or pre.input_size[1:]
    classifiers = [k for k in getattr(model, "classifier_keys", ())]
    pretrained_cfg = dict(
        input_size=[model.in_chans, *size], mean=list(pre.mean), std=list(pre.std), crop_pct=pre.crop_pct,
        interpolation=pre.interpolation, num_classes=model.num_classes,
        first_conv=model.input_conv.removesuffix(".weight"),
        classifier=classifiers[0] if len(classifiers) == 1 else classifiers,
    )  # fmt: skip
    out: dict[str, Any] = dict(architecture=architecture, num_classes=model.num_classes)
    if "global_pool" in args:
        out["global_pool"] = args["global_pool"]
    if class_names:
        out["label_names"] = list(class_names)
    out.update(model_args=args, pretrained_cfg=pretrained_cfg)
    out["vitlab"] = dict(model=name, model_args=dict(overrides))
    return out
