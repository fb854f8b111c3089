"""Published weights downloaded from the real hub (`make test-live`, VITLAB_LIVE=1; needs the network and timm).

For the default tag of each timm-hosted family, `create_model(NAME, pretrained=True)` downloads
timm's file through huggingface_hub and must give the logits of `timm.create_model(NAME,
pretrained=True)` (max relative error below 1e-4 in float32), and the ImageNet names; the file is
also checked against the SHA-256 the hub reports for it. Run with `-s` to see the errors.
"""

import pytest
import timm
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.registry import get_entry

NAMES = [
    "deit_tiny_patch16_224.fb_in1k",
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "swin_tiny_patch4_window7_224.ms_in1k",
    "pvt_v2_b0.in1k",
    "convit_tiny.fb_in1k",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_published_weights_match_timm_pretrained(name):
    reference = timm.create_model(name, pretrained=True).eval()
    ours = vitlab.create_model(name, pretrained=True).eval()
    size = get_entry(name).preprocess.input_size
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = max_rel_error(ours(x), reference(x))
    print(f"\n{name}: max relative error {error:.2e}")
    assert error < 1e-4
    assert len(ours.class_names) == 1000 and ours.class_names[967] == "espresso"
