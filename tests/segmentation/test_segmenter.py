"""Segmenter: what the paper and the official release fix beyond the contract.

The whole model (padding, encoder, both decoders, upsampling, unpadding) is checked against the
authors' code by tests/parity (fixtures from tools/fixtures/segmenter.py); here, the parameter
counts, the mask transformer's last step against a per-patch, per-class loop of eq. 1, other
backbones, and a checkpoint of the other decoder.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vitlab
from tests.parity.test_fixtures import read_fixture
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.registry import get_entry

FIXTURES = Path(__file__).parents[1] / "parity" / "fixtures"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("segmenter_tiny_mask", 6.91),  # the Segmenter-T mask, 150 classes
        ("segmenter_tiny_linear", 5.91),
        ("segmenter_small_linear", 22.43),
        ("segmenter_small_mask", 26.42),
        ("segmenter_base_linear", 87.32),
        ("segmenter_base_mask", 103.27),
        ("segmenter_large_mask", 334.26),  # at 640, the ADE20K release's crop
    ],
)
def test_parameters_with_the_unused_imagenet_head(name, expected):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == expected


def test_masks_are_normalised_scalar_products_of_patch_and_class_features():
    """Eq. 1: mask[k, i] = <p_i P / |p_i P|, c_k C / |c_k C|>, then a LayerNorm over the classes."""
    model = vitlab.create_model("segmenter_tiny_mask", num_classes=4, **get_entry("segmenter_tiny_mask").tiny).eval()
    head = model.decode_head
    captured = {}
    head.decoder_norm.register_forward_hook(lambda m, a, out: captured.setdefault("x", out))
    with torch.no_grad():
        masks = model.forward_logits(torch.randn(1, 3, 48, 32)).logits
        x = captured["x"][0]
        patches, classes = x[:-4], x[-4:]
        expected = torch.empty(4, len(patches))
        for i, p in enumerate(patches):
            for k, c in enumerate(classes):
                a, b = p @ head.proj_patch, c @ head.proj_classes
                expected[k, i] = torch.dot(a / a.norm(), b / b.norm())
        expected = F.layer_norm(expected.T, (4,), head.mask_norm.weight, head.mask_norm.bias, 1e-5).T
    torch.testing.assert_close(masks[0], expected.reshape(4, 3, 2), rtol=1e-5, atol=1e-6)


def test_a_registered_token_backbone():
    deit = get_entry("deit_tiny_distilled_patch16_224").tiny
    model = vitlab.create_model(
        "segmenter_tiny_mask", num_classes=3, backbone="deit_tiny_distilled_patch16_224", backbone_args=deit,
        decoder_heads=2,
    ).eval()  # fmt: skip
    assert model.backbone.num_prefix_tokens == 2  # class and distillation tokens, both left out of the decoder
    with torch.no_grad():
        assert model(torch.randn(2, 3, 50, 70)).shape == (2, 3, 50, 70)


def test_a_pyramid_backbone_is_refused_clearly():
    swin = get_entry("swin_tiny_patch4_window7_224").tiny
    with pytest.raises(TypeError, match=r"Segmenter decodes patch tokens.*returns NHWC"):
        vitlab.create_model("segmenter_tiny_linear", backbone="swin_tiny_patch4_window7_224", backbone_args=swin)


def test_a_checkpoint_of_the_other_decoder_is_refused_with_the_keys_named():
    meta, linear_state, _, _ = read_fixture(FIXTURES / "segmenter_tiny_linear-official-37x21.safetensors")
    mask = vitlab.create_model("segmenter_tiny_mask", **json.loads(meta["kwargs"]))
    with pytest.raises(CheckpointError, match=r"missing keys .*decode_head\.cls_emb.*\n.*unexpected keys .*head"):
        load_state_dict(mask, linear_state, source="linear.pth")


def test_the_mask_transformer_attends_over_patches_and_class_embeddings_jointly():
    model = vitlab.create_model("segmenter_tiny_mask", num_classes=4, **get_entry("segmenter_tiny_mask").tiny).eval()
    with torch.no_grad(), vitlab.capture_attention(model) as maps:
        model(torch.randn(1, 3, 48, 32))
    patches, classes = 3 * 2, 4
    assert maps["decode_head.blocks.1.attn"][0].shape[-2:] == (patches + classes, patches + classes)
    assert maps["backbone.blocks.0.attn"][0].shape[-1] == 1 + patches  # the encoder's class token, then patches


def test_a_release_file_loads_through_create_model(tmp_path):
    """The release's checkpoint.pth holds the weights under `model`, beside training state."""
    meta, state, inputs, expected = read_fixture(FIXTURES / "segmenter_tiny_mask-official.safetensors")
    torch.save({"model": state, "n_cls": 4, "epoch": 63}, tmp_path / "checkpoint.pth")
    model = vitlab.create_model(meta["model"], pretrained=tmp_path / "checkpoint.pth", **json.loads(meta["kwargs"]))
    with torch.no_grad():
        torch.testing.assert_close(model.double().eval()(inputs.double()), expected, rtol=1e-8, atol=1e-10)
