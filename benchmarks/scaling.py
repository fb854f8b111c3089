"""How inference cost grows with the input size: 224 -> 448 -> 896, for local and global attention.

Each model is built once at its registered size and run on larger images (vitlab models accept any
size), at a small batch in fp32 under inference_mode. Next to the measured ms/image and its growth
relative to 224, the table gives the growth of the pixel count (4x, 16x) and of the counted
multiply-accumulates: windowed and striped attention should grow about as fast as the pixels,
global attention faster (its cost is quadratic in the number of tokens).

    python benchmarks/scaling.py --models swin_tiny_patch4_window7_224 vit_small_patch16_224
    python benchmarks/scaling.py --plot docs/scaling.png   # one variant of every family

The models are measured in alternating rounds at each size (order swapped every round), the
figure of a size is the median over the rounds. `--plot` draws ms/image and MACs against the pixel
count, both relative to the first size, on log-log axes (matplotlib), next to the linear line.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from common import ONE_PER_FAMILY, print_table

import vitlab
from vitlab.bench import run_rounds
from vitlab.layers.flex import flex_attention_enabled
from vitlab.registry import get_entry

DEFAULT_MODELS = ONE_PER_FAMILY


def measure(names: list[str], sizes: list[int], args: argparse.Namespace) -> dict[str, dict[int, tuple[float, float]]]:
    """{model: {size: (ms per image, MACs per image)}}, the models alternating at each size."""
    results: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in names}
    models = {name: vitlab.create_model(name).eval() for name in names}
    for size in sizes:
        x = torch.randn(args.batch_size, 3, size, size)
        steps = []
        for name in names:

            def run(model=models[name], x=x) -> None:
                with torch.inference_mode():
                    model(x)

            run()  # first call at this size: plans, caches, compiled kernels
            steps.append(run)
        rounds = run_rounds(steps, args.rounds, args.warmup, args.repeats)
        for name, calls in zip(names, rounds, strict=True):
            ms = statistics.median(statistics.median(r) for r in calls) * 1000 / args.batch_size
            entry = get_entry(name)
            with torch.device("meta"):  # for counting only: no memory, no compute
                meta_model = entry.builder(**entry.config)
            results[name][size] = (ms, vitlab.count_macs(meta_model, (3, size, size)))
            print(f"# {name} {size}: {ms:.1f} ms/img, {results[name][size][1] / 1e9:.2f} GMACs", flush=True)
    return results


def plot(results: dict[str, dict[int, tuple[float, float]]], sizes: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = [(s / sizes[0]) ** 2 for s in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, which, title in ((axes[0], 0, "time per image"), (axes[1], 1, "multiply-accumulates")):
        for i, (name, by_size) in enumerate(results.items()):
            values = [by_size[s][which] / by_size[sizes[0]][which] for s in sizes]
            ax.plot(pixels, values, marker="os^"[i // 10], linestyle="-:"[i // 10 % 2], label=name)
        ax.plot(pixels, pixels, "k--", label="linear in pixels")
        ax.set(xscale="log", yscale="log", title=f"{title}, relative to {sizes[0]}x{sizes[0]}", xlabel="pixels (x)")
        ax.set_xticks(pixels, [f"{p:g}x ({s})" for p, s in zip(pixels, sizes, strict=True)])
    axes[0].set_ylabel("growth (x)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 448, 896])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--plot", help="write the growth plot to this PNG")
    parser.add_argument("--flex", action="store_true", help="SASA through FlexAttention (compiles once per size)")
    args = parser.parse_args()
    unknown = [name for name in args.models if name not in vitlab.list_models(name)]
    if unknown:
        parser.error(f"not registered in vitlab: {', '.join(unknown)} (`vitlab models` lists the names)")
    torch.set_num_threads(args.threads)
    base = args.sizes[0]
    print(
        f"# torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"batch {args.batch_size}, fp32, inference_mode, {args.rounds} alternating rounds"
    )
    with flex_attention_enabled(args.flex):
        results = measure(args.models, args.sizes, args)
    header = ["model", f"{base} ms/img", f"{base} GMACs"]
    header += [f"{size} ms/img (growth; MACs growth; pixels {(size / base) ** 2:g}x)" for size in args.sizes[1:]]
    rows = []
    for name, by_size in results.items():
        (ms0, macs0), row = by_size[base], [name]
        row += [f"{ms0:.1f}", f"{macs0 / 1e9:.2f}"]
        row += [
            f"{by_size[s][0]:.0f} ({by_size[s][0] / ms0:.1f}x; {by_size[s][1] / macs0:.1f}x)" for s in args.sizes[1:]
        ]
        rows.append(tuple(row))
    print_table(tuple(header), rows)
    if args.plot:
        plot(results, args.sizes, args.plot)


if __name__ == "__main__":
    main()
