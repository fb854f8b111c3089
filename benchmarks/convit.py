"""ConViT-Ti, vitlab against timm on this CPU: inference (fp32, bf16 autocast) and a training step.

Both run the same weights (timm's state dict loaded into vitlab). timm computes the positional
attention of every GPSA layer per image and renormalises the mixed rows; vitlab computes it once
per layer call for the whole batch, from offsets cached per grid size. The two are measured in
alternation, `--rounds` times, and the median of the rounds is reported. Run with `make bench`,
which installs timm in a separate environment.
"""

from __future__ import annotations

import argparse

from common import add_timing_options, compare_with_timm, print_table, start_comparison

NAME = "convit_tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_timing_options(parser, batch_size=16)
    args = parser.parse_args()
    timm = start_comparison(args, NAME)
    print_table(("ConViT-Ti", "vitlab img/s", "timm img/s", "vitlab / timm"), compare_with_timm(NAME, args, timm))


if __name__ == "__main__":
    main()
