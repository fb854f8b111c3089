"""Dynamic INT8 quantisation of the linear layers: what it changes and what it gains, side by side.

    python benchmarks/int8.py imagenet [--rounds 5]            # vit_small_patch16_224, random weights
    python benchmarks/int8.py fashion --checkpoint RUN/model.safetensors --data-dir DIR

`imagenet`: top-1 agreement with float32 and the max relative error of the logits, for torch's
dynamic quantisation (`vitlab.export.quantize_int8`) and onnxruntime's (`vitlab export --quantize
int8`), on random images and on the PNG figures under docs/ (real pictures, if not photographs);
then the CPU time per image at batch 1 on one thread, float32 and int8 in PyTorch and onnxruntime,
measured in alternating rounds (median of the rounds). `fashion`: test top-1 of a trained checkpoint
in float32 and in both int8 versions. Results go to docs/export.md by hand.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import vitlab
from vitlab.export import export_onnx, int8_agreement, quantize_int8, quantize_onnx_int8

ROOT = Path(__file__).resolve().parents[1]


class OnnxModel(nn.Module):
    """An onnxruntime session behind a module's call, so that the evaluation code can score it."""

    def __init__(self, path: Path, threads: int = 1):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.float().numpy()})[0])


def onnx_pair(model: nn.Module, size: tuple[int, int], tmp: Path) -> tuple[Path, Path]:
    fp32 = export_onnx(model, tmp / "fp32.onnx", size, dynamic=True).path
    return fp32, quantize_onnx_int8(fp32, tmp / "int8.onnx")


def docs_images(size: int) -> torch.Tensor:
    from vitlab.data.transforms import preprocess_files
    from vitlab.registry import IMAGENET

    files = sorted(str(p) for p in (ROOT / "docs").rglob("*.png"))
    return preprocess_files(files, size, IMAGENET.mean, IMAGENET.std, IMAGENET.crop_pct, 3)


def time_per_call(fn, x: torch.Tensor, repeats: int) -> float:
    """CPU seconds of this process per call (one thread each): robust to other jobs sharing the cores,
    which stretch wall-clock times but not the CPU time a call needs."""
    with torch.no_grad():
        fn(x)
        start = time.process_time()
        for _ in range(repeats):
            fn(x)
    return (time.process_time() - start) / repeats


def imagenet(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = vitlab.create_model("vit_small_patch16_224").eval()
    quantized = quantize_int8(model)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = onnx_pair(model, (224, 224), Path(tmp))
        sets = {"random": torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))}
        sets["docs PNGs"] = docs_images(224)
        for label, images in sets.items():
            for name, kwargs in (("torch int8", dict(quantized=quantized)), ("onnxruntime int8", dict(onnx_path=int8)),
                                 ("onnxruntime fp32", dict(onnx_path=fp32))):  # fmt: skip
                agree, err = int8_agreement(model, inputs=images, **kwargs)
                print(f"{label} ({len(images)} images): {name}: top-1 agreement {agree * 100:.1f}%, "
                      f"max rel. error of logits {err:.3e}")  # fmt: skip
        runners = {
            "torch fp32": model,
            "torch int8": quantized,
            "ort fp32": OnnxModel(fp32),
            "ort int8": OnnxModel(int8),
        }
        x = sets["random"][:1]
        times: dict[str, list[float]] = {key: [] for key in runners}
        for _ in range(args.rounds):
            for key, run in runners.items():
                times[key].append(time_per_call(run, x, args.repeats))
        for key, values in times.items():
            print(f"{key}: {statistics.median(values) * 1e3:.1f} ms of CPU per image (median of {args.rounds} rounds, "
                  f"rounds {', '.join(f'{v * 1e3:.0f}' for v in values)})")  # fmt: skip


def fashion(args: argparse.Namespace) -> None:
    from vitlab.data.augment import EvalPreprocess
    from vitlab.data.datasets import build_datasets
    from vitlab.train.distributed import DistInfo
    from vitlab.train.precision import autocast
    from vitlab.train.tasks.classification import Evaluator

    torch.set_num_threads(1)
    model = vitlab.load_model(args.checkpoint).eval()
    dataset = build_datasets("fashion-mnist", args.data_dir, folder_size=1).test
    size = dataset.size[0]
    pre = model.entry.preprocess
    evaluator = Evaluator(EvalPreprocess(size, pre.mean, pre.std, model.in_chans), 256, DistInfo(), 0, False)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = onnx_pair(model, (size, size), Path(tmp))
        candidates = {"float32": model, "torch int8": quantize_int8(model)}
        candidates.update({"onnxruntime fp32": OnnxModel(fp32), "onnxruntime int8": OnnxModel(int8)})
        for name, candidate in candidates.items():
            metrics = evaluator(candidate, dataset, autocast("none", torch.device("cpu")), name)
            print(f"{name}: test top-1 {metrics['top1']:.2f}% on {len(dataset)} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("imagenet", "fashion"))
    parser.add_argument("--checkpoint")
    parser.add_argument("--data-dir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=32, help="imagenet: random images for the agreement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    imagenet(args) if args.what == "imagenet" else fashion(args)


if __name__ == "__main__":
    main()
