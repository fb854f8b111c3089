"""How inference cost grows with the input size: 224 -> 448 -> 896, for local and global attention.

Each model is built once at its registered size and run on larger images (vitlab models accept any
size), at a small batch in fp32 under inference_mode. Next to the measured ms/image and its growth
relative to 224, the table gives the growth of the pixel count (4x, 16x) and of the counted
multiply-accumulates: windowed and striped attention should grow about as fast as the pixels,
global attention faster (its cost is quadratic in the number of tokens).

    python benchmarks/scaling.py --models swin_tiny_patch4_window7_224 vit_small_patch16_224
"""

from __future__ import annotations

import argparse
import platform

import torch
from common import median_seconds, print_table

import vitlab
from vitlab.registry import get_entry

DEFAULT_MODELS = ["swin_tiny_patch4_window7_224", "cswin_tiny_224", "vit_small_patch16_224"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 448, 896])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    unknown = [name for name in args.models if name not in vitlab.list_models(name)]
    if unknown:
        parser.error(f"not registered in vitlab: {', '.join(unknown)} (`vitlab models` lists the names)")
    torch.set_num_threads(args.threads)
    base = args.sizes[0]
    print(
        f"# torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"batch {args.batch_size}, fp32, inference_mode"
    )
    header = ["model", f"{base} ms/img"]
    for size in args.sizes[1:]:
        ratio = (size / base) ** 2
        header.append(f"{size} ms/img (growth; pixels {ratio:g}x; MACs)")
    rows = []
    for name in args.models:
        model = vitlab.create_model(name).eval()
        entry = get_entry(name)
        with torch.device("meta"):  # for counting only: no memory, no compute
            meta_model = entry.builder(**entry.config)
        row, first, first_macs = [name], None, None
        for size in args.sizes:
            x = torch.randn(args.batch_size, entry.preprocess.input_size[0], size, size)

            def run(model=model, x=x) -> None:
                with torch.inference_mode():
                    model(x)

            ms = median_seconds(run, args.warmup, args.repeats) * 1000 / args.batch_size
            macs = vitlab.count_macs(meta_model, (x.shape[1], size, size))
            if first is None:
                first, first_macs = ms, macs
                row.append(f"{ms:.1f}")
            else:
                row.append(f"{ms:.1f} ({ms / first:.1f}x; {(size / base) ** 2:g}x; {macs / first_macs:.1f}x)")
        rows.append(tuple(row))
    print_table(tuple(header), rows)


if __name__ == "__main__":
    main()
