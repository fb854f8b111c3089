"""Parameters and multiply-accumulates, counted the way the papers count them."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitlab.layers.attention import explicit_attention
from vitlab.layers.dft import fft_for_counting
from vitlab.registry import get_entry


def count_params(model: nn.Module) -> int:
    """Unique parameters (a shared module counts once), frozen ones included, as the papers count."""
    return sum(p.numel() for p in model.parameters())


def _fft_flops(real_shape: tuple[int, ...], dim: list[int]) -> int:
    """An FFT of N points: N * ceil(log2 N) MACs per signal (twice in FLOPs), the rule of HorNet's calc_flops.py.

    N is the number of real points transformed (H * W for a 2-d transform of a map), per channel.
    """
    points = math.prod(real_shape[d] for d in dim)
    return 2 * math.prod(real_shape) * math.ceil(math.log2(points))


# FlopCounterMode counts no FFT; the real-to-complex transform and its inverse (global filters, HorNet).
_FFT_FORMULAS = {
    torch.ops.aten._fft_r2c: lambda x, dim, *_, out_shape: _fft_flops(x, dim),
    torch.ops.aten._fft_c2r: lambda x, dim, *_, out_shape: _fft_flops(out_shape, dim),
}


def count_macs(
    model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), inputs: tuple[torch.Tensor, ...] | None = None
) -> int:
    """Multiply-accumulates of one forward pass on a single image of `input_size`.

    Papers call these "FLOPs". Attention runs through explicit matmuls while counting, so the
    q k^T and attention x v products are included (FLOP counters cannot see inside the fused
    kernel), and global filters as FFTs (`layers.dft.fft_for_counting`). Matmuls, convolutions and
    FFTs are counted; norms, softmax, activations and elementwise products are not. `inputs`
    replaces the image (sequence-to-sequence models: source and target).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_FFT_FORMULAS)
        with torch.no_grad(), explicit_attention(), fft_for_counting(), counter:
            model(*inputs) if inputs is not None else model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_info(name: str, **overrides: Any) -> dict[str, Any]:
    """What a named variant is: parameters, GMACs at its default input size, reference, input size.

    The model is built on the meta device, so no memory is allocated for its weights.
    """
    entry = get_entry(name)
    config = {**entry.config, **overrides}
    with torch.device("meta"):
        model = entry.builder(**config)
    if entry.task == "sequence-to-sequence":  # a source and a target of the sizes the model states
        gmacs = count_macs(model, inputs=model.example_inputs()) / 1e9
        return {"name": name, "params": count_params(model), "gmacs": gmacs, "input_size": model.example_size,
                "reference": entry.reference, "paper": dict(entry.paper)}  # fmt: skip
    input_size = (model.in_chans, *entry.preprocess.input_size[1:])  # in_chans=1 counts a grey input
    if "img_size" in overrides:
        size = overrides["img_size"]
        input_size = (model.in_chans, *((size, size) if isinstance(size, int) else size))
    return {
        "name": name,
        "params": count_params(model),
        "gmacs": count_macs(model, input_size) / 1e9,
        "input_size": input_size,
        "reference": entry.reference,
        "paper": dict(entry.paper),
    }
