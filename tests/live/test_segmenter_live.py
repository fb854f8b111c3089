"""Segmenter at full size against the authors' code (rstrudel/segmenter), in float32.

Needs a checkout of the release: `SEGMENTER_REF=/path/to/segmenter make test-live` (skipped
otherwise), and timm and einops, which the release imports. The release's model is built as its
`create_segmenter` builds it for ADE20K (crop 512, 150 classes, encoder head of 1000 classes),
randomly initialised; its state dict goes through vitlab's converter. Prints the measured max
relative error of each comparison.
"""

import os
import sys

import pytest
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict

REFERENCE = os.environ.get("SEGMENTER_REF")
pytestmark = pytest.mark.skipif(not REFERENCE, reason="set SEGMENTER_REF to a checkout of rstrudel/segmenter")
WIDTHS = {"tiny": (192, 12, 3), "small": (384, 12, 6)}


def official(size: str, decoder: str) -> torch.nn.Module:
    sys.path.insert(0, REFERENCE)
    from segm.model.decoder import DecoderLinear, MaskTransformer
    from segm.model.segmenter import Segmenter
    from segm.model.vit import VisionTransformer

    dim, depth, heads = WIDTHS[size]
    encoder = VisionTransformer((512, 512), 16, depth, dim, 4 * dim, heads, 1000, dropout=0.0, drop_path_rate=0.0)
    if decoder == "linear":
        head = DecoderLinear(150, 16, dim)
    else:
        head = MaskTransformer(150, 16, dim, n_layers=2, n_heads=dim // 64, d_model=dim, d_ff=4 * dim,
                               drop_path_rate=0.0, dropout=0.1)  # fmt: skip
    return Segmenter(encoder, head, n_cls=150).eval()


@pytest.mark.parametrize(("size", "decoder"), [("tiny", "mask"), ("tiny", "linear"), ("small", "mask")])
@pytest.mark.parametrize("shape", [(512, 512), (500, 340)])
def test_full_size_matches_the_release(size, decoder, shape):
    torch.manual_seed(0)
    reference = official(size, decoder)
    with torch.no_grad():
        for p in reference.parameters():  # away from the initialisation, LayerNorm scales included
            p.add_(torch.randn_like(p) * 0.02)
    name = f"segmenter_{size}_{decoder}"
    model = vitlab.create_model(name).eval()
    assert load_state_dict(model, reference.state_dict()) == "official"
    assert vitlab.count_params(model) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(1, 3, *shape)
    with torch.no_grad():
        error = max_rel_error(model(x), reference(x))
    print(f"\nPARITY {name} at {shape[0]}x{shape[1]}: max rel error {error:.2e} (float32)")
    assert error < 1e-4
