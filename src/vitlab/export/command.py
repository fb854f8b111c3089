"""`vitlab export`: a registered model, or a checkpoint, to ONNX or a torch.export program."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vitlab.export.core import ExportError


def cmd_export(args: argparse.Namespace) -> int:
    from vitlab.cli import UsageError
    from vitlab.export.int8 import quantize_onnx_int8
    from vitlab.export.program import save_program
    from vitlab.export.to_onnx import export_onnx
    from vitlab.registry import create_model, load_model

    if args.quantize and args.format != "onnx":
        raise UsageError(
            "--quantize int8 writes ONNX files; in Python, vitlab.export.quantize_int8(model) quantises a model"
        )
    if not args.model and not args.checkpoint:
        raise UsageError("give --model NAME, --checkpoint PATH of a vitlab file, or both")
    model = create_model(args.model, pretrained=args.checkpoint or False) if args.model else load_model(args.checkpoint)
    name = args.model or model.entry.name
    size = tuple(args.img_size) if args.img_size else None
    output = Path(args.output)
    try:
        if args.format == "torch-export":
            result = save_program(model, output, size, args.dynamic, name, verify=not args.no_verify)
        elif args.quantize:
            with tempfile.TemporaryDirectory() as tmp:
                result = export_onnx(model, Path(tmp) / "float32.onnx", size, args.dynamic, name, not args.no_verify)
                quantize_onnx_int8(result.path, output)
            result.path = output
        else:
            result = export_onnx(model, output, size, args.dynamic, name, verify=not args.no_verify)
    except ExportError as err:
        raise UsageError(str(err)) from err
    print(result.describe())
    if args.quantize:
        print("  linear layers quantised to int8 (checks above are of the float32 graph); see docs/export.md")
    return 0


def register_export_command(commands: argparse._SubParsersAction) -> None:
    """Add `vitlab export` to the `vitlab` command's subcommands."""
    export = commands.add_parser(
        "export",
        help="write a model as ONNX (checked with onnxruntime) or a torch.export program (.pt2)",
        description="Export a registered model (random weights unless --checkpoint) or a vitlab checkpoint. "
        "The file is reloaded and compared with PyTorch (max relative error below 1e-4) before the command ends.",
    )
    export.add_argument("--model", help="model name (default: the one stored in a vitlab checkpoint)")
    export.add_argument("--checkpoint", help="weights in any layout vitlab loads")
    export.add_argument("--format", choices=("onnx", "torch-export"), required=True)
    export.add_argument("--output", required=True, help="the file to write (.onnx or .pt2)")
    export.add_argument(
        "--img-size", type=int, nargs=2, metavar=("H", "W"), help="input size traced (default: the model's)"
    )
    export.add_argument(
        "--dynamic", action="store_true",
        help="batch, height and width may vary (height and width stay fixed where the model needs them; the "
        "reason is printed)",
    )  # fmt: skip
    export.add_argument("--quantize", choices=("int8",), help="ONNX: linear layers in int8 (dynamic quantisation)")
    export.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    export.set_defaults(func=cmd_export)
