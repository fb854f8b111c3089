"""The analysis commands of `vitlab`: attention, analyze, report, and `models --details`.

`cli.build_parser` calls `register_analysis_commands(commands, models=...)` once; everything else
about these commands lives here, so that the command-line module only wires them in.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn


class AnalysisUsageError(ValueError):
    """A command line of the analysis commands that cannot work (a layer index out of range, ...)."""


def parse_query(text: str | None) -> str | tuple[float, float] | None:
    """`--query`: "cls" or "x,y" pixels of the model's input image."""
    if text is None or text == "cls":
        return text
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--query is 'cls' or x,y pixels, got {text!r}") from err
    return x, y


def build_model(args: argparse.Namespace) -> nn.Module:
    """The model of `--model` / `--checkpoint` / `--model-args` / `--tiny` (random weights without a checkpoint)."""
    from vitlab.registry import create_model, get_entry, load_model

    overrides = args.model_args or {}
    if args.tiny:
        if not args.model:
            raise AnalysisUsageError("--tiny needs --model NAME")
        overrides = {**get_entry(args.model).tiny, **overrides}
    if args.model:
        return create_model(args.model, pretrained=args.checkpoint or False, **overrides).eval()
    if not args.checkpoint:
        raise AnalysisUsageError("give --model NAME, --checkpoint FILE, or both")
    return load_model(args.checkpoint, **overrides).eval()


def input_side(model: nn.Module, fallback: int) -> int:
    """The side images are prepared at: the model's own `img_size` (a side or a pair), else `fallback`."""
    size = getattr(model, "img_size", None)
    if size is None:
        return fallback
    return size if isinstance(size, int) else size[0]


def refuse_sequence_model(model: nn.Module) -> None:
    """Sequence models take strips or tokens, not one image (`vitlab analyze`): say where their attention is drawn."""
    if getattr(model, "task", None) != "sequence-to-sequence":
        return
    from vitlab.seq2seq.image import ImageToSequence

    if isinstance(model, ImageToSequence):
        hint = "reads image strips: `vitlab attention --model NAME STRIP.png` draws its decoder's cross-attention"
    else:
        hint = (
            "reads token sequences, not images: `vitlab attention --model NAME --source IDS` draws its "
            "decoder's cross-attention"
        )
    raise AnalysisUsageError(f"{model.entry.name} {hint}")


def model_input(model: nn.Module, args: argparse.Namespace) -> torch.Tensor:
    """The image file, or test image `--index` of `--data`, prepared as `vitlab eval` prepares it."""
    from vitlab.data.augment import EvalPreprocess
    from vitlab.data.transforms import preprocess_files

    refuse_sequence_model(model)
    pre = model.entry.preprocess
    size = args.img_size or input_side(model, pre.img_size)
    if args.data:
        from vitlab.analysis.analyze import dataset_images

        raw, _ = dataset_images(args.data, args.data_dir, args.index + 1)
        return EvalPreprocess(size, pre.mean, pre.std, model.in_chans)(raw[args.index :])
    if not args.image:
        raise AnalysisUsageError("give an IMAGE file, or --data NAME [--data-dir DIR] --index I")
    return preprocess_files([args.image], size, pre.mean, pre.std, pre.crop_pct, model.in_chans)


def pick_layer(layers: list, index: int | None):
    """`--layer`: an index into the recorded calls (negative from the end).

    The default is the last call whose keys lie in the image.
    """
    if index is None:
        spatial = [layer for layer in layers if layer.keys.spatial]
        return (spatial or layers)[-1]
    if not -len(layers) <= index < len(layers):
        raise AnalysisUsageError(f"--layer {index} is out of range: the model made {len(layers)} attention calls")
    return layers[index]


def cmd_attention(args: argparse.Namespace) -> int:
    from vitlab.analysis.draw import draw_layer, image_for_display
    from vitlab.analysis.maps import NoAttentionError, record_layers

    model = build_model(args)
    if getattr(model, "task", None) == "sequence-to-sequence":
        from vitlab.analysis.sequences import draw_sequence_attention

        try:
            path, line = draw_sequence_attention(model, args)
        except ValueError as err:  # token ids outside the vocabulary, a layer out of range, a strip too wide
            raise AnalysisUsageError(str(err)) from err
        print(f"{line}\ndecoder cross-attention -> {path}")
        return 0
    images = model_input(model, args)
    from vitlab.analysis.gates import has_gates

    if has_gates(model):
        return draw_gate_maps(model, images, args)
    try:
        layers = record_layers(model, images, embedding=True)
    except (NoAttentionError, ValueError) as err:  # no attention; images the model cannot take (size named)
        raise AnalysisUsageError(str(err)) from err
    if args.list:
        for i, layer in enumerate(layers):
            q, k = layer.queries, layer.keys
            where = f"queries {q.count} {q.label}s (grid {q.grid})  keys {k.count} {k.label}s (grid {k.grid})"
            print(f"{i:3d}  {layer.name}  {layer.kind}  heads {layer.probs.shape[1]}  {where}")
        return 0
    pre = model.entry.preprocess
    picture = image_for_display(images, pre.mean, pre.std)
    if args.rollout or args.explain:
        return draw_class_map(model, images, picture, args)
    layer = pick_layer(layers, args.layer)
    try:
        path = draw_layer(layer, args.output, picture, query=args.query, head=args.head)
    except ValueError as err:
        raise AnalysisUsageError(str(err)) from err
    print(f"{layer.name} ({layer.kind}, {layer.probs.shape[1]} heads) -> {path}")
    from vitlab.analysis.class_masks import has_class_masks

    if has_class_masks(model) or args.classes:
        draw_masks(model, images, picture, args)
    return 0


def draw_gate_maps(model: nn.Module, images: torch.Tensor, args: argparse.Namespace) -> int:
    """HorNet: its gnConv calls (`--list`) or one call's gating products by order (`--layer`, default: the last)."""
    from vitlab.analysis.draw import image_for_display
    from vitlab.analysis.gates import draw_gates, record_gates

    try:
        calls = record_gates(model, images)
    except ValueError as err:  # an image the model cannot take (size named)
        raise AnalysisUsageError(str(err)) from err
    if args.list:
        for i, call in enumerate(calls):
            print(f"{i:3d}  {call.name}  gnconv order {call.order}  map {tuple(call.products[0].shape[1:3])}")
        return 0
    if args.layer is not None and not -len(calls) <= args.layer < len(calls):
        raise AnalysisUsageError(f"--layer {args.layer} is out of range: the model made {len(calls)} gnConv calls")
    call = calls[-1 if args.layer is None else args.layer]
    pre = model.entry.preprocess
    path = draw_gates(call, args.output, image_for_display(images, pre.mean, pre.std))
    print(f"{call.name} (no attention: gnConv gating products of orders 1-{call.order}) -> {path}")
    return 0


def parse_ids(text: str) -> list[int]:
    """`--classes` / `--source` / `--target`: comma-separated integers."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def draw_masks(model: nn.Module, images: torch.Tensor, picture, args: argparse.Namespace) -> None:
    """Segmenter's class masks, one panel per class, to `<output stem>-masks.png` next to the attention picture."""
    from pathlib import Path

    from vitlab.analysis.class_masks import draw_class_masks, pick_classes, record_class_masks

    try:
        masks = record_class_masks(model, images)
        classes = pick_classes(masks, args.classes, args.top_classes)
    except ValueError as err:
        raise AnalysisUsageError(str(err)) from err
    output = Path(args.output)
    path = draw_class_masks(masks, output.with_name(f"{output.stem}-masks{output.suffix or '.png'}"), picture,
                            classes, getattr(model, "class_names", None))  # fmt: skip
    print(f"class masks of classes {classes} -> {path}")


def draw_class_map(model: nn.Module, images: torch.Tensor, picture, args: argparse.Namespace) -> int:
    """`--rollout FUSION` or `--explain gradient-rollout|attention-gradient` (with `--target CLASS`)."""
    from vitlab.analysis.attention import attention_gradient, attention_rollout, gradient_rollout
    from vitlab.analysis.draw import draw_patch_map

    try:
        if args.rollout:
            values, title = attention_rollout(model, images, head_fusion=args.rollout), f"rollout ({args.rollout})"
        else:
            if args.target is not None and len(args.target) != 1:
                raise ValueError(f"--explain takes one --target class, got {args.target}")
            target = None if args.target is None else args.target[0]
            explain = gradient_rollout if args.explain == "gradient-rollout" else attention_gradient
            values, title = (
                explain(model, images, target=target),
                f"{args.explain}, class {'predicted' if target is None else target}",
            )
    except ValueError as err:
        raise AnalysisUsageError(str(err)) from err
    path = draw_patch_map(values[0].detach(), args.output, picture, title)
    print(f"{title} -> {path}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitlab.analysis.analyze import analyze_batches, dataset_images, plot_results, write_csv
    from vitlab.analysis.maps import NoAttentionError
    from vitlab.data.augment import EvalPreprocess

    model = build_model(args)
    refuse_sequence_model(model)
    raw, _ = dataset_images(args.data, args.data_dir, args.images, args.split)
    pre = model.entry.preprocess
    size = args.img_size or input_side(model, raw.shape[-1])
    images = EvalPreprocess(size, pre.mean, pre.std, model.in_chans)(raw)
    if getattr(model, "task", None) == "semantic-segmentation":
        print(f"{model.entry.name}: analysing its encoder ({type(model.backbone).__name__}), the decoder left out")
        model = model.backbone
    try:
        result = analyze_batches(model, images, args.batch_size, embedding=args.embedding)
    except (NoAttentionError, ValueError) as err:  # no attention; images the model cannot take (size named)
        raise AnalysisUsageError(str(err)) from err
    output = Path(args.output)
    write_csv(result, output)
    plot_results(result, output, f"{args.model or args.checkpoint} on {result['images']} {args.data} images")
    for (name, kind), d, e in zip(result["layers"], result["distance"], result["entropy"], strict=True):
        dist = "" if d is None else f"distance {float(d.mean()):6.2f}px  "
        print(f"{name:32s} {kind:18s} {dist}entropy {float(e.mean()):.3f}")
    sims = " ".join(f"{v:.3f}" for v in result["similarity"])
    print(f"patch |cos| per block: {sims}\nwritten: {output}/attention.csv, similarity.csv and plots")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from vitlab.analysis.cards import model_card

    print(model_card(args.details, check_parity=args.check_parity))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vitlab.analysis.report import write_report

    try:
        path = write_report(args.run_dir, args.output, images=args.images)
    except FileNotFoundError as err:
        raise AnalysisUsageError(str(err)) from err
    print(f"report: {path}")
    return 0


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (default: the one stored in a vitlab model.safetensors)")
    parser.add_argument("--checkpoint", help="weights in any layout vitlab loads (default: random weights)")
    parser.add_argument(
        "--model-args", type=json.loads, metavar="JSON", help="constructor overrides, e.g. '{\"depth\": 2}'"
    )
    parser.add_argument("--tiny", action="store_true", help="the variant's seconds-fast tiny configuration")
    parser.add_argument("--img-size", type=int, help="input size (default: the model's)")


def register_analysis_commands(commands, models: argparse.ArgumentParser | None = None) -> None:
    """Add `attention`, `analyze` and `report` to the `vitlab` subcommands, and `--details` to `models`."""
    if models is not None:
        models.add_argument("--details", metavar="NAME", help="the model card of one variant")
        models.add_argument("--check-parity", action="store_true", help="with --details: re-run its parity fixtures")
        listing = models.get_default("func")
        models.set_defaults(func=lambda args: cmd_card(args) if args.details else listing(args))
    attention = commands.add_parser("attention", help="draw a layer's attention maps over an image, in its geometry")
    add_model_options(attention)
    attention.add_argument("image", nargs="?", help="an image file (or --data and --index)")
    attention.add_argument("--data", help="take the image from this dataset's test split instead")
    attention.add_argument("--data-dir")
    attention.add_argument("--index", type=int, default=0, help="with --data: which test image")
    attention.add_argument("--output", default="attention.png")
    attention.add_argument("--query", type=parse_query, help="'cls' or x,y pixels (default: class token or centre)")
    attention.add_argument("--layer", type=int, help="index of the attention call (default: the last spatial one)")
    attention.add_argument("--head", type=int, help="one head (default: a grid of all heads)")
    attention.add_argument("--list", action="store_true", help="list the attention calls and stop")
    attention.add_argument("--rollout", choices=("mean", "max", "min"), help="attention rollout, heads fused so")
    attention.add_argument(
        "--explain", choices=("gradient-rollout", "attention-gradient"), help="class-specific map (see --target)"
    )
    attention.add_argument(
        "--target", type=parse_ids, help="class for --explain (default: the predicted one); token ids for sequences"
    )
    attention.add_argument("--source", type=parse_ids, help="token models: the source token ids, e.g. 5,7,3")
    attention.add_argument("--classes", type=parse_ids, help="Segmenter: the classes whose masks to draw, e.g. 3,12")
    attention.add_argument("--top-classes", type=int, default=6, help="Segmenter: else the K largest classes")
    attention.set_defaults(func=cmd_attention)

    analyze = commands.add_parser("analyze", help="attention distance, entropy and patch similarity over a dataset")
    add_model_options(analyze)
    analyze.add_argument("--data", required=True, help="demo, mnist, fashion-mnist, cifar10, cifar100 or a folder")
    analyze.add_argument("--data-dir")
    analyze.add_argument("--split", choices=("train", "val", "test"), default="test")
    analyze.add_argument("--images", type=int, default=256, help="how many images (the first of the split)")
    analyze.add_argument("--batch-size", type=int, default=32)
    analyze.add_argument(
        "--embedding", action="store_true", help="T2T-ViT: measure the tokens-to-token layers too (large maps)"
    )
    analyze.add_argument("--output", default="analysis")
    analyze.set_defaults(func=cmd_analyze)

    report = commands.add_parser("report", help="one self-contained HTML page about a training run")
    report.add_argument("run_dir")
    report.add_argument("--output", help="default: RUN_DIR/report.html")
    report.add_argument("--images", type=int, default=500, help="test images for per-class accuracy and confusion")
    report.set_defaults(func=cmd_report)
