"""Full-size SegFormer-B0 against live HF transformers (`make test-live`).

HF's `SegformerForSemanticSegmentation` is built with B0's configuration (its `SegformerConfig()`
defaults: widths 32-256, decoder 256; 150 classes) and random weights, its checkpoint is written
with `save_pretrained` and loaded by `vitlab.create_model("segformer_b0", pretrained=...)`, which
reads config.json. Logits (resized to the input, as HF's post-processing does) must agree within a
max relative error of 1e-4 in float32 and 1e-8 in float64, on a non-square input. Run with `-s` to
see the errors.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerForSemanticSegmentation

import vitlab
from tests.helpers import max_rel_error


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-8)])
def test_b0_matches_transformers(tmp_path, dtype, tolerance):
    torch.manual_seed(0)
    config = SegformerConfig(num_labels=150, attn_implementation="sdpa")  # eager's softmax runs in float32
    reference = SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():  # move every weight and BatchNorm statistic off its initial value
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        reference.decode_head.batch_norm.running_mean.normal_(0, 0.1)
        reference.decode_head.batch_norm.running_var.uniform_(0.5, 1.5)
    reference.save_pretrained(tmp_path)
    ours = vitlab.create_model("segformer_b0", pretrained=tmp_path / "model.safetensors").eval()
    reference.to(dtype)
    ours.to(dtype)
    x = torch.randn(1, 3, 512, 384, dtype=dtype)
    with torch.no_grad():
        expected = F.interpolate(reference(x).logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        actual = ours(x)
    error = max_rel_error(actual, expected)
    print(f"\nsegformer_b0 {dtype} 512x384: max relative error {error:.2e}")
    assert error < tolerance
