"""Checkpoints in, model directories out: `vitlab convert`, `save_pretrained` and `from_pretrained`.

A vitlab model directory follows HF's convention, two files:

    model.safetensors   the state dict in vitlab's layout; its header also names the model, its
                        constructor overrides and class names, so the file alone rebuilds the model
    config.json         the same, for people and tools: {"library": "vitlab", "model", "task",
                        "architecture" (the class), "model_args", "num_classes", "class_names",
                        "preprocess" (input size, mean, std, crop_pct, interpolation), "vitlab_version"}

`vitlab.load_model(DIR)`, `create_model(NAME, pretrained=DIR)` and `Model.from_pretrained(DIR)` read
it. `convert` loads a checkpoint in any layout vitlab loads (vitlab, timm, HF transformers, the
official releases, JAX `.npz`, mmsegmentation) strictly into the model it describes or `--model`
names, and writes that directory, or timm's (`to="timm"`: the same tensors and timm's config.json,
see `vitlab.layouts.timm`) for the families timm hosts. `save_pretrained` replaces what the
directory held, as HF's does; `convert` refuses to, unless `force`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.checkpoint import (
    TORCH_SUFFIXES,
    CheckpointError,
    CheckpointInfo,
    extract_state_dict,
    inspect_checkpoint,
    read_checkpoint,
)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TARGETS = ("vitlab", "timm")


class ConvertError(CheckpointError):
    """A conversion that cannot be done (a checkpoint of another model, an output that exists, ...)."""


@dataclass(frozen=True)
class Converted:
    """What `convert` did: the model, the layout it found in the input, and the files it wrote."""

    model: str
    layout: str
    weights: Path
    config: Path
    tensors: int


# What a model says about itself.
def describe(model: nn.Module) -> tuple[str, dict[str, Any], list[str] | None]:
    """(registered name, constructor overrides, class names) of a model built by `create_model`."""
    entry = getattr(model, "entry", None)
    if entry is None:
        raise ConvertError(
            f"this {type(model).__name__} was not built by vitlab.create_model, so its name and constructor "
            f"arguments are unknown: build it with vitlab.create_model(NAME, ...) to save it"
        )
    from vitlab.layouts.timm import constructor_arguments

    args = dict(getattr(model, "model_args", {}))
    classes = getattr(model, "num_classes", None)
    built = constructor_arguments(entry.builder, {**entry.config, **args}).get("num_classes")
    if isinstance(classes, int) and classes != built:
        args["num_classes"] = classes  # reset_classifier since it was built
    for key, value in args.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ConvertError(
                f"{entry.name}: the constructor argument {key}={value!r} cannot be written to {CONFIG_FILE} (only "
                f"numbers, strings, lists and dicts can); build the model from a name and plain arguments"
            ) from err
    names = getattr(model, "class_names", None)
    return entry.name, args, None if names is None else [str(n) for n in names]


def vitlab_config(model: nn.Module) -> dict[str, Any]:
    """The config.json of a vitlab model directory (see the module docstring)."""
    from vitlab import __version__

    name, args, names = describe(model)
    pre = model.entry.preprocess
    size = getattr(model, "img_size", None)
    size = size if isinstance(size, tuple) else pre.input_size[1:]
    input_size = [getattr(model, "in_chans", pre.input_size[0]), *size]
    config: dict[str, Any] = dict(
        library="vitlab", model=name, task=model.entry.task, architecture=type(model).__name__, model_args=args,
    )  # fmt: skip
    if isinstance(getattr(model, "num_classes", None), int):
        config["num_classes"] = model.num_classes
    if names is not None:
        config["class_names"] = names
    config["preprocess"] = dict(
        input_size=input_size, mean=list(pre.mean), std=list(pre.std), crop_pct=pre.crop_pct,
        interpolation=pre.interpolation,
    )  # fmt: skip
    config["vitlab_version"] = __version__
    return config


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent contiguous CPU tensors (safetensors refuses tied, shared storage)."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def write_model(model: nn.Module, weights: Path, config: Path, to: str = "vitlab") -> int:
    """Write the weights and config.json of `model` in `to`'s convention; returns the number of tensors."""
    from safetensors.torch import save

    from vitlab.train.checkpoint import atomic_write_bytes

    name, args, names = describe(model)
    if to == "timm":
        from vitlab.layouts.timm import timm_config

        try:
            meta, document = {"format": "pt"}, timm_config(model, name, args, names)
        except CheckpointError as err:
            raise ConvertError(str(err)) from err
    else:
        meta = {"format": "pt", "vitlab_model": name, "vitlab_model_args": json.dumps(args)}
        if names is not None:
            meta["class_names"] = json.dumps(names)
        document = vitlab_config(model)
    tensors = state_tensors(model)
    atomic_write_bytes(weights, save(tensors, metadata=meta))
    atomic_write_bytes(config, (json.dumps(document, indent=2) + "\n").encode())
    return len(tensors)


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """`directory`/model.safetensors and config.json (created, or replaced); returns the directory."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConvertError(f"cannot save into {directory}: it is a file, not a directory")
    write_model(model, directory / WEIGHTS_FILE, directory / CONFIG_FILE)
    return directory


def from_pretrained(directory: str | Path, expected: type | None = None, **overrides: Any) -> nn.Module:
    """The model a vitlab (or timm) directory holds, as `vitlab.load_model`; `expected`: the class it must be."""
    from vitlab.registry import load_model

    model = load_model(directory, **overrides)
    if expected is not None and not isinstance(model, expected):
        raise ConvertError(
            f"{directory} holds a {model.entry.name} ({type(model).__name__}), not a {expected.__name__}: "
            f"load it with vitlab.load_model({str(directory)!r})"
        )
    return model


# Conversion.
def output_files(output: str | Path) -> tuple[Path, Path]:
    """(weights, config) of an output: a directory gets both inside it, a `.safetensors` file its config beside it."""
    output = Path(output)
    if output.suffix == ".safetensors":
        return output, output.parent / CONFIG_FILE
    if output.suffix in (*TORCH_SUFFIXES, ".npz", ".json"):
        raise ConvertError(f"{output}: the output is a directory or a .safetensors file, not a {output.suffix} file")
    if output.exists() and not output.is_dir():
        raise ConvertError(f"{output} exists and is not a directory")
    return output / WEIGHTS_FILE, output / CONFIG_FILE


def recognised(path: Path, state_dict: dict[str, torch.Tensor], info: CheckpointInfo) -> str:
    """What vitlab recognises in a checkpoint: its model, its config.json, the layouts its keys match."""
    from vitlab.layouts import matching_layouts

    found = [f"{len(state_dict)} tensors (keys such as {', '.join(list(state_dict)[:3])})"]
    if info.model:
        found.append(f"a vitlab file of {info.model}")
    if info.hf_config is not None:
        kind = info.hf_config.get("model_type") or info.hf_config.get("architectures")
        found.append(f"an HF config.json ({kind})" if kind else "a config.json")
    layouts = [f"the {layout} layout of {cls.__name__}" for cls, layout in matching_layouts(state_dict)]
    found.append("keys in " + " / ".join(layouts) if layouts else "keys in no foreign layout vitlab knows")
    return f"{path}: " + "; ".join(found)


def _found_layout(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    from vitlab.layouts import matching_layouts

    matches = matching_layouts(state_dict)
    for cls in type(model).__mro__:
        for owner, layout in matches:
            if owner is cls:
                return layout
    return "native"


def convert(
    source: str | Path,
    output: str | Path,
    *,
    model: str | None = None,
    to: str = "vitlab",
    force: bool = False,
    class_names: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Converted:
    """Load `source` (any layout vitlab loads) strictly into its model and write it in `to`'s convention.

    `model` names the variant where the file does not (vitlab and timm files name theirs, HF's
    config.json gives sizes and labels but not vitlab's name); `overrides` are constructor arguments
    the file does not state (`num_classes` of a fine-tuned bare state dict). An existing output is
    refused unless `force`.
    """
    from vitlab.registry import create_model, get_entry

    if to not in TARGETS:
        raise ConvertError(f"unknown target layout {to!r}: choose one of {', '.join(TARGETS)}")
    weights, config = output_files(output)
    existing = [str(p) for p in (weights, config) if p.exists()]
    if existing and not force:
        raise ConvertError(f"{' and '.join(existing)} already exist(s): pass --force to overwrite")
    source = Path(source)
    info = inspect_checkpoint(source)
    contents = info.contents if info.contents is not None else read_checkpoint(info.path)
    state_dict = extract_state_dict(contents, str(info.path))
    name = model or info.model
    if name is None:
        raise ConvertError(f"{source} does not say which model it holds: pass --model NAME.\n"
                           f"recognised: {recognised(info.path, state_dict, info)}")  # fmt: skip
    entry = get_entry(name)
    if to == "timm":
        _check_timm_family(entry)
    try:
        net = create_model(name, pretrained=dataclasses.replace(info, contents=contents), **(overrides or {}))
    except CheckpointError as err:
        raise ConvertError(
            f"cannot convert {source} into {name} ({_class_name(entry)}): {err}\n"
            f"recognised: {recognised(info.path, state_dict, info)}\n"
            f"(arguments the file does not state go in --model-args, e.g. '{{\"num_classes\": 10}}')"
        ) from err
    if class_names is not None:
        if len(class_names) != getattr(net, "num_classes", len(class_names)):
            raise ConvertError(f"{len(class_names)} class names were given; {name} has {net.num_classes} classes")
        net.class_names = list(class_names)
    count = write_model(net, weights, config, to)
    return Converted(name, _found_layout(net, state_dict), weights, config, count)


def _class_name(entry: Any) -> str:
    return getattr(entry.builder, "__name__", str(entry.builder))


def _check_timm_family(entry: Any) -> None:
    """Refuse `--to timm` before any loading when the model's class has no timm counterpart."""
    from vitlab.layouts.timm import no_timm_hint, timm_family

    if not isinstance(entry.builder, type) or timm_family(entry.builder) is None:
        raise ConvertError(
            f"timm has no {entry.name}: vitlab builds it as {_class_name(entry)}, not a timm family; {no_timm_hint()}"
        )


# The command line.
def cmd_convert(args: argparse.Namespace) -> int:
    from vitlab.predict import read_labels

    names = read_labels(args.labels) if args.labels else None
    done = convert(
        args.input, args.output, model=args.model, to=args.to, force=args.force, class_names=names,
        overrides=args.model_args,
    )  # fmt: skip
    print(f"{args.input} ({done.layout} layout) -> {done.model} in {args.to}'s layout: {done.weights} "
          f"({done.tensors} tensors) and {done.config}")  # fmt: skip
    return 0


def register_convert_command(commands: Any) -> None:
    """Add `vitlab convert` to the command line's subcommands."""
    parser = commands.add_parser(
        "convert",
        help="a checkpoint in any layout vitlab loads -> model.safetensors + config.json (vitlab's or timm's)",
        description="Load a checkpoint (vitlab, timm, HF transformers, official releases, JAX .npz, mmseg) strictly "
        "into its model and write model.safetensors and config.json: vitlab's (vitlab.load_model reads them) or, "
        "with --to timm, timm's (timm.create_model('local-dir:OUT', pretrained=True) reads them).",
    )
    parser.add_argument("input", help="checkpoint file, or a directory holding one (HF, timm, vitlab)")
    parser.add_argument("output", help="directory for model.safetensors and config.json, or a .safetensors file "
                        "(config.json beside it)")  # fmt: skip
    parser.add_argument("--model", help="model name (default: the one the checkpoint names)")
    parser.add_argument(
        "--model-args", type=json.loads, metavar="JSON", help="constructor arguments the checkpoint does not state"
    )
    parser.add_argument("--to", choices=TARGETS, default="vitlab", help="layout written (default: vitlab)")
    parser.add_argument("--labels", help="file with one class name per line, stored as the class names")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.set_defaults(func=cmd_convert)
