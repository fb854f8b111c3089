"""`vitlab models`: the table of registered variants, and of their published weights."""

from __future__ import annotations

import argparse

from vitlab.cli import UsageError


def cmd_models(args: argparse.Namespace) -> int:
    from vitlab.analysis.complexity import model_info
    from vitlab.registry import get_entry, list_models

    if args.pretrained:
        return list_pretrained(args.pattern or "*")
    names = list_models(args.pattern or "*")
    if not names:
        raise UsageError(f"no model matches {args.pattern!r}")
    rows = []
    for name in names:
        info = model_info(name)
        size = "x".join(str(s) for s in info["input_size"][1:])
        weights = get_entry(name).weights
        published = f"{weights[0].tag} ({weights[0].layout})" if weights else "-"
        published += f" +{len(weights) - 1}" if len(weights) > 1 else ""
        rows.append((name, f"{info['params'] / 1e6:.2f}M", f"{info['gmacs']:.2f}", size, published, info["reference"]))
    print_table(("model", "params", "GMACs", "input", "weights", "reference"), rows)
    return 0


def list_pretrained(pattern: str) -> int:
    """`vitlab models --pretrained`: every published checkpoint, named with its tag, the default first."""
    from vitlab.registry import get_entry, list_models
    from vitlab.weights import split_tag

    names = list_models(pattern, pretrained=True)
    if not names:
        raise UsageError(f"no published weights match {pattern!r}")
    rows = []
    for name in names:
        base, tag = split_tag(name)
        w = next(w for w in get_entry(base).weights if w.tag == tag)
        size = "x".join(map(str, (w.preprocess or get_entry(base).preprocess).input_size[1:]))
        rows.append((name, str(w.num_classes or "-"), size, w.layout, w.source))
    print_table(("model.tag", "classes", "input", "layout", "file"), rows)
    return 0


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last one is left as it is."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
