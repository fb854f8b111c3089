"""Checkpoint layouts other than a model's own: one module per (family, foreign layout).

A converter renames (and where needed reshapes) a state dict from a foreign layout into the
model's own; `detect` recognises the layout from the key names, so loading is automatic. A
config reader turns the configuration saved beside a checkpoint (HF's `config.json`) into
constructor arguments, so that the model is built to match the file (its LayerNorm eps, its
classes). Both are registered per model class and found through the class hierarchy.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]
FAMILY_MODULES = (
    "vit",
    "swin",
    "pvt",
    "setr",
    "segmenter",
    "segformer",
    "seq2seq",
)  # vitlab.layouts.<name>, imported on first use


@dataclass(frozen=True)
class Converter:
    layout: str
    detect: Callable[[StateDict], bool]
    convert: Callable[[StateDict, nn.Module], StateDict]


_CONVERTERS: dict[type, list[Converter]] = {}
_CONFIG_READERS: dict[type, Callable[[dict[str, Any]], dict[str, Any]]] = {}
_loaded = False


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in FAMILY_MODULES:
            importlib.import_module(f"vitlab.layouts.{name}")


def register_converter(model_cls: type, layout: str, detect: Callable[[StateDict], bool]):
    """Declare `fn(state_dict, model) -> state_dict` as the converter of `layout` for a model class.

    `detect(state_dict)` says whether a state dict is in that layout, from its key names.
    """

    def wrap(fn: Callable[[StateDict, nn.Module], StateDict]):
        _CONVERTERS.setdefault(model_cls, []).append(Converter(layout, detect, fn))
        return fn

    return wrap


def register_config_reader(model_cls: type):
    """Declare `fn(config) -> constructor overrides` for the HF `config.json` of a model class."""

    def wrap(fn: Callable[[dict[str, Any]], dict[str, Any]]):
        _CONFIG_READERS[model_cls] = fn
        return fn

    return wrap


def convert_state_dict(model: nn.Module, state_dict: StateDict) -> tuple[StateDict, str]:
    """Convert to the model's native layout; returns the converted dict and the layout found."""
    _load_families()
    for cls in type(model).__mro__:
        for converter in _CONVERTERS.get(cls, []):
            if converter.detect(state_dict):
                return converter.convert(state_dict, model), converter.layout
    return state_dict, "native"


def matching_layouts(state_dict: StateDict) -> list[tuple[type, str]]:
    """Every (model class, layout) whose `detect` recognises `state_dict`: what a file looks like, for errors."""
    _load_families()
    return [(cls, c.layout) for cls, converters in _CONVERTERS.items() for c in converters if c.detect(state_dict)]


def config_overrides(model_cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments that make a `model_cls` match an HF `config.json`; {} if none is known."""
    _load_families()
    for cls in model_cls.__mro__:
        if cls in _CONFIG_READERS:
            return _CONFIG_READERS[cls](config)
    return {}


def rename_keys(state_dict: StateDict, rules: list[tuple[str, str | Callable[[re.Match], str]]]) -> StateDict:
    """Rename keys with regular-expression rules (`re.sub` replacements); the first match wins, others stay."""
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


def fuse_qkv(state_dict: StateDict, names: tuple[str, ...] = ("q", "k", "v"), fused: str = "qkv") -> StateDict:
    """Concatenate separate projections `X.<name>.*` into one `X.<fused>.*`, in the order of `names`:
    `X.q.*`, `X.k.*`, `X.v.*` into `X.qkv.*` by default; PVT's `("k", "v")` into `kv`."""
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
