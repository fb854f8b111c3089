"""Swin-T, vitlab against timm on this CPU: inference (fp32, bf16 autocast) and a training step.

Both run the same weights (timm's state dict loaded into vitlab). timm runs as it ships (its Swin
attention is the unfused path unless TIMM_FUSED_ATTN asks for the experimental fused one); vitlab
runs all windows through one fused `scaled_dot_product_attention` call. On a shared machine the
two are measured in alternation, `--rounds` times, and the median of the rounds is reported.
Run with `make bench`, which installs timm in a separate environment.
"""

from __future__ import annotations

import argparse

import torch
from common import add_timing_options, compare_with_timm, median_seconds, print_table, start_comparison

from vitlab.layers.grouping.windows import Windows, window_partition

NAME = "swin_tiny_patch4_window7_224"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_timing_options(parser, batch_size=8)
    args = parser.parse_args()
    timm = start_comparison(args, NAME)
    print_table(("Swin-T", "vitlab img/s", "timm img/s", "vitlab / timm"), compare_with_timm(NAME, args, timm))
    grouping(args.batch_size, 10)


def grouping(batch_size: int, repeats: int) -> None:
    """Shifted windows of a stage-1 map (56x56x96, window 7, shift 3): the textbook roll + partition and
    its inverse against the one-gather permutation WindowAttention uses (`Windows.group`, whose backward
    is the inverse gather); forward, and forward + backward."""
    x = torch.randn(batch_size, 56, 56, 96)
    scheme = Windows((7, 7), (3, 3))
    plan = scheme.plan((56, 56), x.device)
    windows = window_partition(torch.roll(x, (-3, -3), (1, 2)), (7, 7))

    def roll_in() -> torch.Tensor:
        return window_partition(torch.roll(x, (-3, -3), (1, 2)), (7, 7))

    def gather_in() -> torch.Tensor:
        return scheme.group(x, plan)

    def roll_out() -> torch.Tensor:
        y = windows.view(batch_size, 8, 8, 7, 7, 96).permute(0, 1, 3, 2, 4, 5).reshape(batch_size, 56, 56, 96)
        return torch.roll(y, (3, 3), (1, 2))

    def gather_out() -> torch.Tensor:
        return scheme.ungroup(windows, plan)

    leaf = x.clone().requires_grad_()

    def roll_backward() -> None:
        window_partition(torch.roll(leaf, (-3, -3), (1, 2)), (7, 7)).sum().backward()

    def gather_backward() -> None:
        scheme.group(leaf, plan).sum().backward()

    assert torch.equal(roll_in(), gather_in())
    assert torch.equal(roll_out(), gather_out())
    rows = []
    for label, textbook, ours in [
        ("pad + roll + partition", roll_in, gather_in),
        ("reverse + roll back + crop", roll_out, gather_out),
        ("forward + backward of the first", roll_backward, gather_backward),
    ]:
        a, b = (median_seconds(f, 2, repeats) * 1000 for f in (textbook, ours))
        rows.append((label, f"{a:.1f}", f"{b:.1f}", f"{a / b:.1f}x"))
    print(f"\n# window grouping, batch {batch_size}x56x56x96, window 7, shift 3")
    print_table(("step", "torch.roll + permute ms", "index_select ms", "speed-up"), rows)


if __name__ == "__main__":
    main()
