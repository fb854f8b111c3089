"""`vitlab predict`: classes of images (or masks, or label sequences) from a checkpoint or published weights.

Images are read and batched as they are needed, so memory does not grow with the number of files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vitlab.cli import UsageError, positive_int


def read_labels(path: str | Path) -> list[str]:
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read the labels file {path}: {err}") from err
    labels = [line for line in lines if line]
    if not labels:
        raise UsageError(f"labels file {path} is empty")
    return labels


def skipped_line(skipped: list[str] | None) -> str:
    """The end of a summary line when files were skipped: `, skipped N unreadable (first: PATH)`."""
    return f", skipped {len(skipped)} unreadable (first: {skipped[0]})" if skipped else ""


def cmd_predict(args: argparse.Namespace) -> int:
    from vitlab.data.images import BadImageError
    from vitlab.data.transforms import expand_image_paths, stream_files
    from vitlab.registry import create_model, load_model
    from vitlab.train.seg_eval import is_segmentation

    if args.pretrained and not args.model:
        raise UsageError("--pretrained needs --model NAME (a tag is allowed: deit_tiny_patch16_224.fb_in1k)")
    if bool(args.pretrained) == bool(args.checkpoint):
        raise UsageError("give either --checkpoint PATH or --pretrained (the published weights)")
    if args.pretrained:  # a variant without published weights says so here
        from vitlab.hub import fetch_weights
        from vitlab.registry import get_entry
        from vitlab.weights import select_weights, split_tag

        entry = get_entry(args.model)
        weights = select_weights(entry, split_tag(args.model)[1])
        if entry.task == "semantic-segmentation":  # the fetched file is then a checkpoint like any other
            args.model, args.checkpoint = entry.name, str(fetch_weights(entry.name, weights))
            return predict_masks(args)
    elif is_segmentation(args.model, args.checkpoint):
        return predict_masks(args)
    if args.model:
        model = create_model(args.model, pretrained=args.pretrained or args.checkpoint)
    else:
        model = load_model(args.checkpoint)
    model.eval()
    if getattr(model, "task", None) == "sequence-to-sequence":  # image strips in, label sequences out
        from vitlab.seq2seq.predict import predict_strips

        skipped = [] if args.skip_bad_images else None
        try:
            read = predict_strips(model, expand_image_paths(args.images), args.draw, skipped)
        except BadImageError:
            raise
        except ValueError as err:
            raise UsageError(str(err)) from err
        if skipped:
            print(f"read {len(read)} strips{skipped_line(skipped)}", file=sys.stderr)
        return 0
    names = getattr(model, "class_names", None)
    if args.labels:
        names = read_labels(args.labels)
        if len(names) != model.num_classes:
            raise UsageError(f"{args.labels} names {len(names)} classes; the model has {model.num_classes}")
    weights = getattr(model, "pretrained_weights", None)
    pre = weights.preprocess if weights is not None and weights.preprocess is not None else model.entry.preprocess
    size = args.img_size or (model.img_size[0] if model.img_size else pre.img_size)
    paths = expand_image_paths(args.images)
    if not paths:
        raise UsageError(f"no image files in {', '.join(args.images)}")
    skipped: list[str] | None = [] if args.skip_bad_images else None
    began, done = time.perf_counter(), 0
    batches = stream_files(
        paths, size, pre.mean, pre.std, pre.crop_pct, model.in_chans, args.batch_size, args.workers, skipped
    )
    for names_done, batch in batches:  # batch by batch: memory does not grow with the number of files
        with torch.inference_mode():
            probs = model(batch).float().softmax(dim=-1)
        top = probs.topk(min(args.top, probs.shape[-1]), dim=-1)
        for path, values, indices in zip(names_done, top.values, top.indices, strict=True):
            print(path)
            for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True), 1):
                label = f"  {names[i]}" if names else ""
                print(f"  {rank}. {p * 100:6.2f}%  class {i}{label}")
        done += len(names_done)
    seconds = time.perf_counter() - began
    rate = done / max(seconds, 1e-9)
    print(f"predicted {done} images in {seconds:.1f}s ({rate:.1f} images/s){skipped_line(skipped)}", file=sys.stderr)
    return 0


def predict_masks(args: argparse.Namespace) -> int:
    """`vitlab predict` for a segmentation model: a palette PNG mask and an overlay per image."""
    from vitlab.data.transforms import expand_image_paths
    from vitlab.train.seg_eval import load_segmenter, predict_segmentation

    model = load_segmenter(args.model, args.checkpoint).eval()
    if args.labels:
        model.class_names = read_labels(args.labels)
        if len(model.class_names) != model.num_classes:
            raise UsageError(f"{args.labels} names {len(model.class_names)} classes; the model has {model.num_classes}")
    paths = expand_image_paths(args.images)
    if not paths:
        raise UsageError(f"no image files in {', '.join(args.images)}")
    skipped = [] if args.skip_bad_images else None
    results = predict_segmentation(model, paths, args.output, args.img_size, skipped)
    for path, mask, picture, shares in results:
        print(f"{path}\n  mask:    {mask}\n  overlay: {picture}")
        print("  " + ", ".join(f"{name} {share:.1f}%" for name, share in shares.items()))
    if skipped:
        print(f"segmented {len(results)} images{skipped_line(skipped)}", file=sys.stderr)
    return 0


def add_predict_command(commands: Any) -> None:
    predict = commands.add_parser("predict", help="top-k classes of images (segmentation: mask and overlay PNGs)")
    predict.add_argument("--model", help="model name (default: the one stored in a vitlab model.safetensors)")
    predict.add_argument("--checkpoint", help="weights in any layout vitlab loads")
    predict.add_argument(
        "--pretrained", action="store_true", help="the model's published weights (downloaded once, then cached)"
    )
    predict.add_argument("--labels", help="file with one class name per line (default: the checkpoint's names)")
    predict.add_argument("--img-size", type=positive_int, help="input size (default: the model's)")
    predict.add_argument("--top", type=positive_int, default=5)
    predict.add_argument("--draw", help="image-to-sequence models: draw the decoder's cross-attention to this .png")
    predict.add_argument("--output", default=".", help="segmentation: folder for the masks and overlays (default: .)")
    predict.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    predict.add_argument("--workers", type=int, default=0, help="processes decoding images (default: 0)")
    predict.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable files, counted")
    predict.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    predict.set_defaults(func=cmd_predict)
