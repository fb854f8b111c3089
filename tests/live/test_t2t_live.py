"""Full-size T2T-ViT variants against the official code (`make test-live`, with VITLAB_T2T_REF set).

T2T-ViT is in neither timm nor HF transformers, so the reference is a checkout of the official
repository (yitu-opensource/T2T-ViT; its models import timm), named by the environment variable
VITLAB_T2T_REF; without it these tests are skipped. The parity fixtures are what CI checks; this
builds every registered official variant at full width and 224x224, moves its weights off their
initial values, loads its state dict (the Performer's `w` and the sinusoidal `pos_embed` included)
into vitlab's model, and requires the logits to agree within a max relative error of 1e-4 in float32.
Run with `-s` to see the errors.
"""

import os
import sys

import pytest
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict

REFERENCE = os.environ.get("VITLAB_T2T_REF")
VARIANTS = [name for name in vitlab.list_models("t2t_vit_*") if name != "t2t_vit_mini_28"]


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE, reason="set VITLAB_T2T_REF to a checkout of yitu-opensource/T2T-ViT")
@pytest.mark.parametrize("name", VARIANTS)
def test_full_size_variant_matches_the_official_code(name):
    sys.path.insert(0, REFERENCE)
    from models import t2t_vit  # the official module, imported from the checkout

    torch.manual_seed(0)
    reference = getattr(t2t_vit, name)().eval()
    with torch.no_grad():  # move every trained parameter off its initial value (zero biases, unit norms)
        for p in reference.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    ours = vitlab.create_model(name).eval()
    assert load_state_dict(ours, reference.state_dict(), source=f"official {name}") == "native"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    error = max_rel_error(actual, expected)
    print(f"\n{name} (3, 224, 224): max relative error {error:.2e}")
    assert error < 1e-4
