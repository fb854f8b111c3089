"""SegFormer-B0 at 512x512, vitlab against HF transformers' SegformerForSemanticSegmentation on this CPU.

Both run the same weights: HF's model (B0's configuration, 150 classes, random weights) is saved with
`save_pretrained` and loaded by `vitlab.create_model("segformer_b0", pretrained=...)`. HF runs as it
ships (its default attention implementation). The cases:

- inference fp32: the decoder's logits at stride 4 (HF's `.logits`, vitlab's `forward_logits`), as
  both libraries return them before resizing;
- a training step: logits resized to the 512x512 labels, cross entropy with ignore index 255 (HF
  computes it inside the model when given `labels`, vitlab's loss is written here the same way),
  backward and an AdamW step.

On a shared machine the two are measured in alternation, `--rounds` times, order swapped every
other round, and the median of the rounds is reported.

    python benchmarks/segformer.py --rounds 3 --batch-size 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import add_timing_options, alternate, median_seconds, print_table, start_comparison

import vitlab


def build_pair(num_classes: int = 150):
    """(vitlab model, HF model) holding the same random weights, or (vitlab model, None) without transformers."""
    torch.manual_seed(0)
    try:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
    except ImportError:
        return vitlab.create_model("segformer_b0", num_classes=num_classes), None
    reference = SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_classes))
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        ours = vitlab.create_model("segformer_b0", pretrained=Path(tmp) / "model.safetensors")
    return ours, reference


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model, vitlab.segmentation.SegmentationModel):
        return model.forward_logits(x).logits
    return model(pixel_values=x).logits


def inference(model: torch.nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            logits(model, x)

    return x.shape[0] / median_seconds(run, warmup, repeats)


def train_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, warmup: int, repeats: int) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if isinstance(model, vitlab.segmentation.SegmentationModel):
            loss = F.cross_entropy(model(x), labels, ignore_index=255)
        else:
            loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        optimizer.step()

    return x.shape[0] / median_seconds(step, warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    add_timing_options(parser, batch_size=1)
    args = parser.parse_args()
    start_comparison(args, "SegFormer-B0")
    ours, reference = build_pair()
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    train_x = torch.randn(args.train_batch_size, 3, args.size, args.size)
    labels = torch.randint(0, 150, (args.train_batch_size, args.size, args.size))
    timing = dict(warmup=args.warmup, repeats=args.repeats)
    cases = [
        ("inference fp32", lambda m: inference(m, x, **timing)),
        ("train step fp32 (fwd+bwd+AdamW)", lambda m: train_step(m, train_x, labels, **timing)),
    ]
    rows = []
    for label, measure in cases:
        a, b = alternate(measure, ours, reference, args.rounds)
        rows.append((f"segformer_b0 {args.size}x{args.size}", label, f"{a:.2f}", f"{b:.2f}" if b else "-",
                     f"{a / b:.2f}x" if b else "-"))  # fmt: skip
    print_table(("model", "case", "vitlab img/s", "HF img/s", "vitlab / HF"), rows)


if __name__ == "__main__":
    main()
