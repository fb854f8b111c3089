"""Full-size PVT v2 variants against live timm (`make test-live`).

The parity fixtures (small widths, float64) are what CI checks; this compares every registered PVT v2
variant at full width and its native input size in float32: timm's state dict is loaded into
vitlab's model, and the logits must agree within a max relative error of 1e-4. Run with `-s` to see
the errors. (timm has no PVT v1; its parity is checked against the official code and HF by fixtures.)
"""

import pytest
import timm
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict
from vitlab.registry import get_entry

VARIANTS = vitlab.list_models("pvt_v2_*")


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_full_size_variant_matches_timm(name):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():  # move every parameter off its initial value (zero biases, unit norms)
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = vitlab.create_model(name).eval()
    assert load_state_dict(ours, reference.state_dict(), source=f"timm {name}") == "native"
    size = get_entry(name).preprocess.input_size
    x = torch.randn(1, *size)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    error = max_rel_error(actual, expected)
    print(f"\n{name} {tuple(size)}: max relative error {error:.2e}")
    assert error < 1e-4
