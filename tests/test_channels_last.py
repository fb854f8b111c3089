"""channels-last memory format on the convolutional families: same outputs as the plain layout.

`model.to(memory_format=torch.channels_last)` with a channels-last input is what `vitlab bench
--channels-last` and `vitlab train` (`channels_last: true`) run. The reference here is the same
weights in the plain layout (float32, max relative error below 1e-5), on each family's tiny
configuration at a non-square size; float64 parity is measured on the plain layout elsewhere.
"""

import copy

import pytest
import torch

from vitlab.registry import create_model, get_entry

FAMILIES = [
    "hornet_tiny_7x7",
    "hornet_tiny_gf",
    "pvt_tiny",
    "pvt_v2_b0",
    "ceit_tiny_patch16_224",
    "vt_resnet18",
    "sasa_resnet26",
    "axial26s",
    "mit_b0",
    "segformer_b0",
    "setr_pup_vit_tiny_512",
    "setr_mla_vit_tiny_512",
]


def main_output(out):
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out[0] if isinstance(out, tuple | list) else out


@pytest.mark.parametrize("name", FAMILIES)
def test_channels_last_gives_the_plain_layouts_outputs(name):
    torch.manual_seed(0)
    plain = create_model(name, **get_entry(name).tiny).eval()
    last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert any(
        p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in last.parameters()
    )
    side = plain.min_input_size if getattr(plain, "min_input_size", None) else 32
    x = torch.randn(2, plain.in_chans, 2 * side, 3 * side)
    with torch.no_grad():
        expected = main_output(plain(x))
        got = main_output(last(x.contiguous(memory_format=torch.channels_last)))
    assert got.shape == expected.shape
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5
