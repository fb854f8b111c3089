"""vitlab's own small models: the ConvNet teacher and the ViT with a convolutional stem."""

from pathlib import Path

import torch
import yaml

import vitlab
from vitlab.layers.embed import ConvStem
from vitlab.models.convnet import ConvNet
from vitlab.models.vit import VisionTransformer


def _conv_bn_params(cin, cout):
    return cin * cout * 9 + 2 * cout


def test_convnet_params_by_hand():
    widths = (32, 64, 128)
    expected = sum(_conv_bn_params(a, b) + _conv_bn_params(b, b) for a, b in zip((3, 32, 64), widths, strict=True))
    expected += 128 * 1000 + 1000
    assert vitlab.model_info("convnet_small")["params"] == expected
    assert (
        vitlab.model_info("convnet_tiny")["params"]
        == sum(_conv_bn_params(a, b) + _conv_bn_params(b, b) for a, b in zip((3, 16, 32), (16, 32, 64), strict=True))
        + 64 * 1000
        + 1000
    )


def test_vitc_params_by_hand():
    stem = _conv_bn_params(3, 32) + _conv_bn_params(32, 64) + 64 * 128 + 128
    dim, hidden = 128, 256
    block = 4 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    tokens = 1 + 8 * 8  # class token + the 8x8 grid of a 32 px image at stride 4
    expected = stem + dim + tokens * dim + 6 * block + 2 * dim + dim * 1000 + 1000
    assert vitlab.model_info("vitc_tiny_s4_32")["params"] == expected


def test_vitc_is_a_vision_transformer_with_a_conv_stem():
    model = vitlab.create_model("vitc_tiny_s4_32", num_classes=10).eval()
    assert isinstance(model, VisionTransformer) and isinstance(model.patch_embed, ConvStem)
    assert model.patch_size == (4, 4) and model.grid_size == (8, 8)
    with vitlab.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert maps["blocks.5.attn"][0].shape == (1, 4, 65, 65)  # class token + 8x8 patches
    assert isinstance(vitlab.create_model("convnet_tiny"), ConvNet)


def test_fashion_mnist_recipe_model_params_by_hand():
    """The model of recipes/fashion-mnist.yaml: a 5-conv stem and a head over the flattened 7x7 tokens."""
    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "fashion-mnist.yaml").read_text())
    model = vitlab.create_model(recipe["model"], num_classes=10, img_size=28, **recipe["model_args"])
    chans = (1, 16, 32, 32, 64, 64)
    stem = sum(_conv_bn_params(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)) + 64 * 64 + 64
    dim, hidden = 64, 128
    block = 4 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    tokens = 1 + 7 * 7
    expected = stem + dim + tokens * dim + 3 * block + 2 * dim + 7 * 7 * dim * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == expected == 209_018
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
