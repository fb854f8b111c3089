"""Full-size ConViT variants against live timm (`make test-live`, VITLAB_LIVE=1).

The parity fixtures are what CI checks; this compares every timm-hosted ConViT at full width and
224x224 in float32: timm's state dict (randomly perturbed, so the locality initialisation is not
all that is compared) loads strictly into vitlab's model, and the logits agree within a max
relative error of 1e-4. Run with `-s` to see the errors.
"""

import pytest
import timm
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict
from vitlab.registry import get_entry

VARIANTS = ["convit_tiny", "convit_small", "convit_base"]


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_full_size_variant_matches_timm(name):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = vitlab.create_model(name).eval()
    assert load_state_dict(ours, reference.state_dict(), source=f"timm {name}") == "native"
    size = get_entry(name).preprocess.input_size
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    error = max_rel_error(actual, expected)
    print(f"\n{name} {tuple(size)}: max relative error {error:.2e}")
    assert error < 1e-4
