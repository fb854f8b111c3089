"""Full-size PS-ViT variants against the official code (`make test-live` with PSVIT_REFERENCE set).

PS-ViT is in neither timm nor HF, so the reference is a checkout of yuexy/PS-ViT whose path is in
the environment variable PSVIT_REFERENCE (skipped without it). The official sampler is a CUDA
extension: the kernel's forward, transcribed in tools/fixtures/psvit.py, stands in for it. Each
official builder's model, with its weights moved off their initial values (offsets included), is
loaded into vitlab's and the logits at 224x224 must agree within a max relative error of 1e-4.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict

REFERENCE = os.environ.get("PSVIT_REFERENCE")
pytestmark = pytest.mark.skipif(not REFERENCE, reason="set PSVIT_REFERENCE to a checkout of yuexy/PS-ViT")
VARIANTS = ["ps_vit_ti_14", "ps_vit_b_14", "ps_vit_b_16", "ps_vit_b_18"]  # the official builders


def official_module():
    pytest.importorskip("timm")  # the official file imports timm's registry and helpers
    sys.path.insert(0, str(Path(__file__).parents[2] / "tools" / "fixtures"))
    import psvit as generator  # tools/fixtures/psvit.py: the kernel's transcription

    generator.install_stub()
    sys.path.insert(0, REFERENCE)
    from models import ps_vit

    return ps_vit


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_full_size_variant_matches_the_official_code(name):
    torch.manual_seed(0)
    reference = getattr(official_module(), name)().eval()
    with torch.no_grad():  # move every parameter off its initial value (zero offsets, zero biases)
        for key, p in reference.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if "offset_layer" in key else 0.02))
    ours = vitlab.create_model(name).eval()
    assert load_state_dict(ours, reference.state_dict(), source=f"official {name}") == "native"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    error = max_rel_error(actual, expected)
    print(f"\n{name} (3, 224, 224): max relative error {error:.2e}")
    assert error < 1e-4
