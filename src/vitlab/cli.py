"""The `vitlab` command.

Every command raises vitlab's own errors; `main()` alone prints them, one line `error: ...` each
(exit status 2, or 3 for a diverged training run).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class UsageError(ValueError):
    """A command line that cannot work (a labels file of the wrong length, ...)."""


def default_threads() -> int:
    """Intra-op threads for this process: the cores not busy with other work right now (at least one).

    On a shared or loaded machine, as many threads as cores make every thread wait for the slowest,
    which other work keeps descheduling; see docs/training.md for the measurements. The idle share
    of the CPUs is sampled for a fifth of a second (Linux); OMP_NUM_THREADS, when set, is respected.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle = idle_cores(0.2)
    return cores if idle is None else max(1, min(cores, round(idle)))


def idle_cores(seconds: float) -> float | None:
    """How many cores sat idle over the next `seconds`, from /proc/stat; None where it cannot be read."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def vitlab_command() -> str:
    """How to run vitlab from a shell, as printed in hints: `vitlab` if that is this installation, else python -m."""
    script = shutil.which("vitlab")
    if script and Path(script).resolve().parent == Path(sys.executable).resolve().parent:
        return "vitlab"
    return f"{shlex.quote(sys.executable)} -m vitlab"


def cmd_train(args: argparse.Namespace) -> int:
    from vitlab.train.config import FIELDS, load_yaml, make_config
    from vitlab.train.run import train
    from vitlab.train.rundir import RunDir

    values: dict = {}
    explicit = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    if args.resume:
        output = explicit.get("output") or (load_yaml(args.config).get("output") if args.config else None)
        if not output:
            raise UsageError("--resume needs --output DIR, the run to continue")
        if RunDir(output).has_checkpoint():  # else the run starts: the same command after any pre-emption
            values.update(RunDir(output).read_config())
    if args.config:
        values.update(load_yaml(args.config))
    values.update(explicit)
    config = make_config(values)
    if not config.output:
        config.output = f"runs/{config.model}-{Path(config.data).name}"
    train(config, resume=args.resume, threads=args.threads)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vitlab.train.evaluate import evaluate
    from vitlab.train.seg_eval import is_segmentation

    if is_segmentation(args.model, args.checkpoint):
        return eval_masks(args)

    metrics = evaluate(
        args.model,
        args.checkpoint,
        args.data,
        args.data_dir,
        split=args.split,
        batch_size=args.batch_size or 256,
        img_size=args.img_size,
        device=args.device,
        workers=args.workers,
        progress=sys.stderr.isatty(),
        amp=args.amp,
        skip_bad=args.skip_bad_images,
    )
    print(
        f"{metrics['model']} on {args.data} ({metrics['split']}, {metrics['images']} images): "
        f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}"
    )
    seconds = metrics["seconds"]
    print(f"evaluated in {seconds:.1f}s ({metrics['images'] / max(seconds, 1e-9):.1f} images/s)", file=sys.stderr)
    if metrics["skipped"]:
        print(f"skipped {len(metrics['skipped'])} unreadable images (first: {metrics['skipped'][0]})")
    return 0


def eval_masks(args: argparse.Namespace) -> int:
    """`vitlab eval` for a segmentation model: the per-class table, mIoU, mAcc and aAcc."""
    from vitlab.train.seg_eval import evaluate_segmentation

    metrics = evaluate_segmentation(
        args.model, args.checkpoint, args.data, args.data_dir, split=args.split, batch_size=args.batch_size or 8,
        img_size=args.img_size, device=args.device, workers=args.workers, progress=sys.stderr.isatty(), amp=args.amp,
        slide=args.slide, crop_size=args.crop_size, stride=args.stride, flip=args.flip, scales=args.scales,
        skip_bad=args.skip_bad_images,
    )  # fmt: skip
    print(f"{metrics['model']} on {args.data} ({metrics['split']}, {metrics['images']} images)")
    print(metrics["table"])
    if metrics["skipped"]:
        print(f"skipped {len(metrics['skipped'])} unreadable image/mask pairs (first: {metrics['skipped'][0]})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vitlab.train.demo import run_demo

    run_demo(args.output, epochs=args.epochs)
    return 0


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (`batch_size` -> `--batch-size`); None means "not given"."""
    import json

    from vitlab.train.config import FIELDS, TrainConfig, option_kind

    defaults = TrainConfig()
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        text = f"(default: {default})" if default not in (None, {}, "") else None
        kind = option_kind(name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is tuple:
            parser.add_argument(flag, nargs=len(default), type=float, default=None, metavar="X", help=text)
        elif kind is dict:
            parser.add_argument(
                flag, type=json.loads, default=None, metavar="JSON", help="JSON object, e.g. '{\"depth\": 6}'"
            )
        elif kind in (int, float):
            parser.add_argument(flag, type=kind, default=None, help=text)
        else:
            parser.add_argument(flag, default=None, help=text)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_eval_command(commands: Any) -> None:
    evaluate = commands.add_parser("eval", help="top-1 / top-5 (or mIoU per class) of a checkpoint on a dataset")
    evaluate.add_argument("--model", help="model name (default: the one stored in a vitlab model.safetensors)")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", required=True, help="demo, mnist, fashion-mnist, cifar10, cifar100 or a folder")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument(
        "--split", choices=("all", "train", "val", "test"), help="default: all for an image folder, else test"
    )
    evaluate.add_argument("--batch-size", type=positive_int, help="default: 256 (classification), 8 (segmentation)")
    evaluate.add_argument("--img-size", type=positive_int)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--workers", type=int, default=2)
    evaluate.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"), default="auto")
    evaluate.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable images, counted")
    segmentation = evaluate.add_argument_group("segmentation models")
    segmentation.add_argument("--slide", action="store_true", help="sliding-window inference (mmseg's slide)")
    segmentation.add_argument("--crop-size", type=positive_int, help="window side (default: the model's scale)")
    segmentation.add_argument("--stride", type=positive_int, help="window stride (default: 2/3 of the crop)")
    segmentation.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    segmentation.add_argument(
        "--scales", type=float, nargs="+", metavar="R", help="test-time resize ratios, e.g. 0.75 1 1.25"
    )
    evaluate.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    from vitlab import __version__

    parser = argparse.ArgumentParser(prog="vitlab", description="Vision transformers: models, training, analysis.")
    parser.add_argument("--version", action="version", version=f"vitlab {__version__}")
    parser.add_argument(
        "--threads", type=positive_int, help="CPU threads per process (default: the cores not busy with other work)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    from vitlab.listing import cmd_models

    models = commands.add_parser("models", help="list the models with params, GMACs and reference")
    models.add_argument("pattern", nargs="?", help="shell pattern or substring of the names, e.g. 'deit*'")
    models.add_argument("--pretrained", action="store_true", help="list the published weights, as NAME.TAG")
    models.set_defaults(func=cmd_models)

    from vitlab.predict import add_predict_command

    add_predict_command(commands)

    train = commands.add_parser(
        "train",
        help="train a classifier or a segmentation model (torchrun --nproc_per_node=N -m vitlab train ... for "
        "several processes)",
        description="Train any vitlab classifier or segmentation model. Options may come from --config recipe.yaml "
        "(keys are the long option names); options on the command line override the recipe.",
    )
    train.add_argument("--config", help="YAML recipe (e.g. recipes/fashion-mnist.yaml or a run's config.yaml)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    add_train_options(train)
    train.set_defaults(func=cmd_train)

    add_eval_command(commands)

    demo = commands.add_parser("demo", help="train a small ViT on the built-in data and draw its attention")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--epochs", type=positive_int)
    demo.set_defaults(func=cmd_demo)

    from vitlab.analysis.commands import register_analysis_commands
    from vitlab.bench import register_bench_command
    from vitlab.convert import register_convert_command
    from vitlab.export import register_export_command

    register_analysis_commands(commands, models=models)
    register_bench_command(commands)
    register_convert_command(commands)
    register_export_command(commands)
    add_allow_nonfinite(commands)
    return parser


def add_allow_nonfinite(commands: Any) -> None:
    """Every command that reads weights can be told to take NaN or infinite ones."""
    for command in commands.choices.values():
        flags = {flag for action in command._actions for flag in action.option_strings}
        if flags & {"--checkpoint", "--pretrained", "--teacher-checkpoint"}:
            command.add_argument(
                "--allow-nonfinite", action="store_true", help="load checkpoints with NaN or infinite weights"
            )


def known_errors() -> tuple[type[BaseException], ...]:
    """The errors vitlab raises for bad input: printed as one line, never as a traceback."""
    from vitlab.analysis.commands import AnalysisUsageError
    from vitlab.checkpoint import CheckpointError
    from vitlab.data.datasets import DatasetError
    from vitlab.data.images import BadImageError
    from vitlab.registry import UnknownModelError
    from vitlab.train.checkpoint import RunWriteError
    from vitlab.train.config import ConfigError
    from vitlab.train.distributed import PeerLostError

    return (
        UsageError, AnalysisUsageError, CheckpointError, ConfigError, DatasetError, BadImageError, UnknownModelError,
        RunWriteError, PeerLostError,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads or default_threads())
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        # Past a file-size limit (ulimit -f) a write then fails with EFBIG, reported with the file's name,
        # instead of the kernel killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from vitlab.checkpoint_checks import allow_nonfinite
    from vitlab.data.arrays import workers_watched
    from vitlab.train.loop import TrainingDiverged

    try:
        with allow_nonfinite(getattr(args, "allow_nonfinite", False)), workers_watched():
            return args.func(args)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except known_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
