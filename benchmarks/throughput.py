"""Inference throughput of vitlab against timm for ViT-S/16 and DeiT-S on this CPU.

Both run the same weights (timm's state dict loaded into vitlab) at batch 16, in float32 and
under bf16 autocast. The two libraries are measured in alternation, `--rounds` times, and the
median of the rounds is reported. Run with `make bench`, which installs timm in a separate
environment.
"""

from __future__ import annotations

import argparse
import platform

import torch
from common import alternate, inference_throughput, load_timm, print_table

import vitlab

MODELS = ["vit_small_patch16_224", "deit_small_patch16_224"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating vitlab/timm measurements (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timm = load_timm()
    print(
        f"# torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"batch {args.batch_size}" + (f", timm {timm.__version__}" if timm else ", timm not installed")
    )
    rows = []
    for name in MODELS:
        torch.manual_seed(0)
        ours = vitlab.create_model(name).eval()
        batch = torch.randn(args.batch_size, 3, 224, 224)
        reference = None
        if timm is not None:
            reference = timm.create_model(name, pretrained=False).eval()
            ours.load_state_dict(reference.state_dict())
        for bf16 in (False, True):

            def measure(model: torch.nn.Module, batch: torch.Tensor = batch, bf16: bool = bf16) -> float:
                return inference_throughput(model, batch, bf16, args.warmup, args.repeats)

            mine, theirs = alternate(measure, ours, reference, args.rounds)
            ratio = f"{mine / theirs:.2f}x" if theirs else "-"
            precision = "bf16 autocast" if bf16 else "fp32"
            rows.append((name, precision, f"{mine:.1f}", f"{theirs:.1f}" if theirs else "-", ratio))
    print_table(("model", "precision", "vitlab img/s", "timm img/s", "vitlab / timm"), rows)


if __name__ == "__main__":
    main()
