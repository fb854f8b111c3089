"""Does patch diversification (Gong et al. 2021) change what attention does? A small ViT, with and without.

Trains `vit_mini_28` twice on Fashion-MNIST with the same seed, images and steps, once plainly and
once with the patch-wise cosine and contrastive losses (`--patch-cosine`, `--patch-contrastive`),
then runs `vitlab analyze` on each (mean attention distance, entropy, patch-wise |cos| per block)
and `vitlab attention` (a grid of the last layer's heads and the rollout) on test images, and draws
the two runs side by side:

    python benchmarks/diversity_analysis.py --data-dir /usr/share/datasets/fashion-mnist --output runs/diversity

Writes OUTPUT/{plain,diverse}/ (the runs, their analyses and pictures) and OUTPUT/comparison.png.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

RECIPE = [
    "--data", "fashion-mnist", "--img-size", "28", "--lr", "2e-3", "--lr-scaling", "sqrt", "--weight-decay", "0.05",
    "--label-smoothing", "0.1", "--crop", "none", "--hflip", "0.5", "--workers", "0", "--progress", "off",
]  # fmt: skip
VARIANTS = {"plain": [], "diverse": ["--patch-cosine", "1.0", "--patch-contrastive", "1.0"]}


def vitlab(*args: str) -> float:
    """Run one vitlab command on one thread; its wall-clock seconds."""
    start = time.time()
    subprocess.run([sys.executable, "-m", "vitlab", "--threads", "1", *args], check=True)
    return time.time() - start


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


def compare(output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for (name, colour), offset in zip((("plain", "tab:blue"), ("diverse", "tab:orange")), (-0.1, 0.1), strict=True):
        rows = read_csv(output / name / "analysis" / "attention.csv")
        layers = sorted({int(r["index"]) for r in rows})
        for r in rows:
            left.scatter(int(r["index"]) + offset, float(r["mean_distance_px"]), color=colour, s=14, alpha=0.7)
        means = [sum(float(r["mean_distance_px"]) for r in rows if int(r["index"]) == i) for i in layers]
        counts = [sum(1 for r in rows if int(r["index"]) == i) for i in layers]
        left.plot(layers, [m / c for m, c in zip(means, counts, strict=True)], color=colour, label=name)
        sims = read_csv(output / name / "analysis" / "similarity.csv")
        right.plot([int(s["block"]) + 1 for s in sims], [float(s["patch_abs_cosine"]) for s in sims],
                   marker="o", color=colour, label=name)  # fmt: skip
    left.set_xlabel("block")
    left.set_ylabel("mean attention distance (px of 28)")
    left.legend(fontsize=8)
    right.set_xlabel("block")
    right.set_ylabel("patch-wise |cosine similarity|")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "comparison.png", dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output", type=Path, default=Path("runs/diversity"))
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--images", type=int, default=500, help="test images analysed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = ["--data-dir", args.data_dir]
    for name, extra in VARIANTS.items():
        run = args.output / name
        epochs = -(-args.steps * args.batch_size // args.train_images)
        seconds = vitlab("train", "--model", "vit_mini_28", *RECIPE, *data, "--train-images", str(args.train_images),
                         "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--val-every",
                         str(epochs), "--seed", str(args.seed), "--output", str(run), "--resume", *extra)  # fmt: skip
        print(f"{name}: trained in {seconds:.0f} s", flush=True)
        weights = ["--checkpoint", str(run / "model.safetensors")]
        vitlab("analyze", *weights, "--data", "fashion-mnist", *data, "--images", str(args.images),
               "--output", str(run / "analysis"))  # fmt: skip
        for index in (0, 1):
            image = ["--data", "fashion-mnist", *data, "--index", str(index)]
            vitlab("attention", *weights, *image, "--output", str(run / f"attention{index}.png"))
            vitlab("attention", *weights, *image, "--rollout", "mean", "--output", str(run / f"rollout{index}.png"))
    compare(args.output)
    print(f"written: {args.output / 'comparison.png'}")


if __name__ == "__main__":
    main()
