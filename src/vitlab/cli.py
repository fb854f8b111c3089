"""The `vitlab` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


def cmd_models(args: argparse.Namespace) -> int:
    from vitlab.analysis.complexity import model_info
    from vitlab.registry import list_models

    names = list_models(args.pattern or "*")
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    rows = []
    for name in names:
        info = model_info(name)
        size = "x".join(str(s) for s in info["input_size"][1:])
        rows.append((name, f"{info['params'] / 1e6:.2f}M", f"{info['gmacs']:.2f}", size, info["reference"]))
    header = ("model", "params", "GMACs", "input", "reference")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def read_labels(path: str | Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    labels = [line for line in lines if line]
    if not labels:
        raise SystemExit(f"error: labels file {path} is empty")
    return labels


def cmd_predict(args: argparse.Namespace) -> int:
    from vitlab.checkpoint import read_class_names
    from vitlab.data.images import BadImageError, load_image
    from vitlab.data.transforms import eval_transform
    from vitlab.registry import create_model, get_entry

    entry = get_entry(args.model)
    names = read_labels(args.labels) if args.labels else read_class_names(args.checkpoint)
    overrides = {"num_classes": len(names)} if names else {}
    model = create_model(args.model, pretrained=args.checkpoint, **overrides).eval()
    size = args.img_size or entry.input_size[1]
    try:
        batch = torch.stack(
            [eval_transform(load_image(p), size, entry.mean, entry.std, entry.crop_pct) for p in args.images]
        )
    except BadImageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with torch.inference_mode():
        probs = model(batch).float().softmax(dim=-1)
    top = probs.topk(min(args.top, probs.shape[-1]), dim=-1)
    for path, values, indices in zip(args.images, top.values, top.indices, strict=True):
        print(path)
        for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True), 1):
            label = f"  {names[i]}" if names and i < len(names) else ""
            print(f"  {rank}. {p * 100:6.2f}%  class {i}{label}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitlab", description="Vision transformers: models, training, analysis.")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the models with params, GMACs and reference")
    models.add_argument("pattern", nargs="?", help="shell pattern or substring of the names, e.g. 'deit*'")
    models.set_defaults(func=cmd_models)

    predict = commands.add_parser("predict", help="top-k classes of images")
    predict.add_argument("--model", required=True)
    predict.add_argument("--checkpoint", required=True, help="weights in any layout vitlab loads")
    predict.add_argument("--labels", help="file with one class name per line")
    predict.add_argument("--img-size", type=int, help="input size (default: the model's)")
    predict.add_argument("--top", type=int, default=5)
    predict.add_argument("images", nargs="+")
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vitlab.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (CheckpointError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
