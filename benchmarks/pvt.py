"""PVT v2 (b0, b2), vitlab against timm on this CPU: inference (fp32, bf16 autocast) and a training step.

Both run the same weights (timm's state dict loaded into vitlab). timm runs as it ships (fused
`scaled_dot_product_attention` unless TIMM_FUSED_ATTN=0); vitlab's spatial-reduction attention goes
through `attend()`, which also takes the fused kernel (plain products for short key sequences in a CPU
training step, see layers/attention.py). PVT v2 has nothing that depends on the input size to cache:
no position tables, no masks, no index tensors. On a shared machine the two are measured in
alternation, `--rounds` times, and the median of the rounds is reported.

    python benchmarks/pvt.py --rounds 3 --batch-size 16
"""

from __future__ import annotations

import argparse

from common import add_timing_options, compare_with_timm, print_table, start_comparison

NAMES = ("pvt_v2_b0", "pvt_v2_b2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(NAMES))
    add_timing_options(parser, batch_size=8)
    args = parser.parse_args()
    timm = start_comparison(args, "PVT v2")
    rows = [(name, *row) for name in args.models for row in compare_with_timm(name, args, timm)]
    print_table(("model", "case", "vitlab img/s", "timm img/s", "vitlab / timm"), rows)


if __name__ == "__main__":
    main()
