"""Data efficiency: which vision transformers learn from few images? Fashion-MNIST at 1k, 3k and 10k.

ViT, DeiT (hard distillation from the CNN), ConViT, CeiT, T2T-ViT and HorNet, each in a 28x28
configuration of about 0.45M parameters (the registered `*_mini_28` variants), and a CNN of the
same size, are trained on class-balanced subsets of the Fashion-MNIST training split with the
same number of optimisation steps whatever the subset size (so a 1k subset is seen 10x as often
as a 10k one; `--max-steps` ends the last epoch early where the steps are not whole epochs), three
seeds each. The seed draws the subset (the same images for every model with
that seed) and the initialisation. 10% of the training split (6,000 images, never in a subset)
validates each run once at its end; the official test split (10,000 images) is measured once, on
the final weights. The DeiT student of a (size, seed) learns from the CNN trained on the same
images: it has no other data than the others.

Every run is one `vitlab train` command (printed), single-threaded, `--jobs` of them at a time; a
run whose summary.json exists is reused, so the study resumes where it stopped. Writes
`results.csv`, `table.md` (mean and spread of the test accuracy) and `accuracy.png` under
--output, and prints the table and the wall-clock time.

    python benchmarks/data_efficiency.py --data-dir /usr/share/datasets/fashion-mnist --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODELS = {  # label: registered name
    "CNN": "convnet_mini_28",
    "ViT": "vit_mini_28",
    "DeiT (hard distillation)": "deit_mini_28",
    "HorNet": "hornet_mini_28",
    "ConViT": "convit_mini_28",
    "CeiT": "ceit_mini_28",
    "T2T-ViT": "t2t_vit_mini_28",
}
TEACHER = "convnet_mini_28"
# The same optimisation for every model: AdamW, cosine schedule, label smoothing, flips (the
# garments are centred: the Fashion-MNIST recipe's augmentation).
RECIPE = [
    "--data", "fashion-mnist", "--img-size", "28", "--holdout", "0.1", "--lr", "2e-3", "--lr-scaling", "sqrt",
    "--weight-decay", "0.05", "--label-smoothing", "0.1", "--crop", "none", "--hflip", "0.5", "--workers", "0",
    "--progress", "off",
]  # fmt: skip


def run_dir(out: Path, model: str, size: int, seed: int) -> Path:
    return out / "runs" / f"{model}-n{size}-s{seed}"


def command(args: argparse.Namespace, model: str, size: int, seed: int) -> list[str]:
    epochs = -(-args.steps * args.batch_size // size)  # the last one cut short by --max-steps
    cmd = [sys.executable, "-m", "vitlab", "--threads", "1", "train", "--model", model, *RECIPE]
    cmd += ["--data-dir", args.data_dir, "--train-images", str(size), "--seed", str(seed)]
    cmd += ["--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--val-every", str(epochs)]
    cmd += ["--output", str(run_dir(args.output, model, size, seed)), "--resume"]
    if model == "deit_mini_28":
        teacher = run_dir(args.output, TEACHER, size, seed) / "model.safetensors"
        cmd += ["--teacher", TEACHER, "--teacher-checkpoint", str(teacher), "--distillation", "hard"]
    return cmd


def train(args: argparse.Namespace, model: str, size: int, seed: int) -> dict:
    where = run_dir(args.output, model, size, seed)
    if not (where / "summary.json").is_file():
        cmd = command(args, model, size, seed)
        print(" ".join(cmd), flush=True)
        began = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)  # the run's own processor time, whatever else runs
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{model} n={size} seed={seed} failed:\n{output[-3000:]}")
        (where / "wall_seconds.txt").write_text(f"{time.perf_counter() - began:.1f}\n")
        (where / "cpu_seconds.txt").write_text(f"{usage.ru_utime + usage.ru_stime:.1f}\n")
    summary = json.loads((where / "summary.json").read_text())
    for kind in ("wall", "cpu"):
        path = where / f"{kind}_seconds.txt"
        summary[f"{kind}_seconds"] = float(path.read_text()) if path.is_file() else float("nan")
    return summary


def run_all(args: argparse.Namespace, models: list[str]) -> list[dict]:
    jobs = [(m, n, s) for m in models for n in args.sizes for s in args.seeds]
    # The teachers first: a DeiT run needs its CNN's weights.
    first = [j for j in jobs if j[0] == TEACHER]
    rest = [j for j in jobs if j[0] != TEACHER]
    results = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for part in (first, rest):
            for job, summary in zip(part, pool.map(lambda j: train(args, *j), part), strict=True):
                results[job] = summary
    return [{**results[(m, n, s)], "model": m, "size": n, "seed": s} for m, n, s in jobs]


def write_outputs(args: argparse.Namespace, rows: list[dict], labels: dict[str, str]) -> str:
    fields = ["model", "params", "size", "seed", "epochs", "best_val_top1", "test_top1", "train_seconds"]
    with open(args.output / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*fields, "wall_seconds", "cpu_seconds"])
        for row in rows:
            writer.writerow([row[k] for k in fields] + [row["wall_seconds"], row["cpu_seconds"]])
    header = "| model | params | " + " | ".join(f"{n:,} images" for n in args.sizes) + " |"
    lines = [header, "|---|---|" + "---|" * len(args.sizes)]
    series = {}
    for model, label in labels.items():
        cells, means, spreads = [], [], []
        for size in args.sizes:
            accs = [r["test_top1"] for r in rows if r["model"] == model and r["size"] == size]
            mean, spread = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{mean:.2f} ± {spread:.2f}")
            means.append(mean)
            spreads.append(spread)
        params = next(r["params"] for r in rows if r["model"] == model)
        lines.append(f"| {label} | {params / 1e6:.2f}M | " + " | ".join(cells) + " |")
        series[label] = (means, spreads)
    table = "\n".join(lines) + "\n"
    (args.output / "table.md").write_text(table)
    plot(args, series)
    return table


def plot(args: argparse.Namespace, series: dict[str, tuple[list[float], list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (means, spreads) in series.items():
        ax.errorbar(args.sizes, means, yerr=spreads, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(args.sizes, [f"{n:,}" for n in args.sizes])
    ax.set(xlabel="training images (Fashion-MNIST, class-balanced)", ylabel="test top-1 (%)")
    ax.set_title(f"{args.steps} steps of {args.batch_size} images; mean and std over {len(args.seeds)} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(args.output / "accuracy.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the folder of the Fashion-MNIST IDX files")
    parser.add_argument("--output", type=Path, default=Path("runs/data-efficiency"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=250, help="optimisation steps of every run")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=list(MODELS.values()), help="registered names")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each single-threaded)")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    models = args.models if TEACHER in args.models or "deit_mini_28" not in args.models else [TEACHER, *args.models]
    began = time.perf_counter()
    rows = run_all(args, models)
    labels = {name: label for label, name in MODELS.items() if name in models}
    labels.update({name: name for name in models if name not in labels})
    table = write_outputs(args, rows, labels)
    wall, cpu = sum(r["wall_seconds"] for r in rows), sum(r["cpu_seconds"] for r in rows)
    print(table)
    print(
        f"{len(rows)} runs; this invocation {time.perf_counter() - began:.0f} s wall clock with {args.jobs} jobs; "
        f"the runs' own wall clock summed: {wall:.0f} s, their processor time summed: {cpu:.0f} s "
        f"({cpu / args.jobs / 60:.1f} min on {args.jobs} idle cores); wrote {args.output}/results.csv, table.md, "
        "accuracy.png"
    )


if __name__ == "__main__":
    main()
