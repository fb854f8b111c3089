"""Full-size DAT variants against the authors' code (`make test-live`, with a checkout of the release).

DAT is in neither timm nor HF, so the reference is the CVPR 2022 release itself (LeapLabTHU/DAT,
tag CVPR2022 = 566a593; it needs timm and einops): set VITLAB_DAT_REFERENCE to a checkout of it,
otherwise these tests are skipped. Every registered variant is built at full width with the
release's configuration, its state dict (weights moved off their initial values) is loaded into
vitlab's model, and the float32 logits at 224x224 must agree within a max relative error of 1e-4.
Run with `-s` to see the errors.
"""

import os
import sys

import pytest
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict
from vitlab.registry import get_entry

REFERENCE = os.environ.get("VITLAB_DAT_REFERENCE")
VARIANTS = vitlab.list_models("dat_*")


def release_model(name: str) -> torch.nn.Module:
    """The release's DAT with the configuration of its configs/<name>.yaml."""
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    from models.dat import DAT

    config = get_entry(name).config
    specs = [list(spec) for spec in config["stage_spec"]]
    return DAT(
        img_size=224, dim_stem=config["dims"][0], dims=list(config["dims"]), heads=list(config["heads"]),
        depths=[len(s) for s in specs], stage_spec=specs, groups=[g or -1 for g in config["groups"]],
        window_sizes=[7] * 4, use_pes=[False, False, True, True], strides=[-1, -1, 1, 1],
        offset_range_factor=[-1, -1, 2, 2], sr_ratios=[-1] * 4, drop_path_rate=0.0,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(REFERENCE is None, reason="set VITLAB_DAT_REFERENCE to a checkout of LeapLabTHU/DAT at CVPR2022")
@pytest.mark.parametrize("name", VARIANTS)
def test_full_size_variant_matches_the_release(name):
    torch.manual_seed(0)
    reference = release_model(name).eval()
    with torch.no_grad():  # move every parameter off its initial value
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = vitlab.create_model(name).eval()
    assert load_state_dict(ours, reference.state_dict(), source=f"release {name}") == "native"
    x = torch.randn(1, *get_entry(name).preprocess.input_size)
    with torch.no_grad():
        expected, actual = reference(x)[0], ours(x)
    error = max_rel_error(actual, expected)
    print(f"\n{name} (1, 3, 224, 224): max relative error {error:.2e}")
    assert error < 1e-4
