"""Every ViT/DeiT variant against live timm and HF transformers, at full size.

Run with `make test-live` (an environment with timm and transformers). Prints the measured max
relative error of each comparison.
"""

import pytest
import timm
import torch
import transformers

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict

VIT_NAMES = [n for n in vitlab.list_models("vit_*") + vitlab.list_models("deit_*") if timm.is_model(n)]


def compare(ours, expected, label):
    error = max_rel_error(ours, expected)
    print(f"\nPARITY {label}: max rel error {error:.2e}")
    assert error < 1e-4


@pytest.mark.parametrize("name", VIT_NAMES)
def test_timm_variant(name):
    reference = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    model = vitlab.create_model(name).eval()
    assert load_state_dict(model, reference.state_dict()) == "native"
    assert vitlab.count_params(model) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(2, *vitlab.registry.get_entry(name).preprocess.input_size)
    with torch.no_grad():
        compare(model(x), reference(x), f"{name} timm {timm.__version__}")


def test_distilled_training_outputs_match_timm():
    name = "deit_small_distilled_patch16_224"
    reference = timm.create_model(name, pretrained=False, drop_rate=0.0)
    reference.set_distilled_training(True)
    model = vitlab.create_model(name)
    load_state_dict(model, reference.state_dict())
    reference.train()
    model.train()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for mine, theirs in zip(model(x), reference(x), strict=True):
            compare(mine, theirs, f"{name} training-mode heads")


@pytest.mark.parametrize("size", [(384, 384), (160, 256), (200, 150)])
def test_any_size_matches_timm_dynamic_size(size):
    name = "deit_base_distilled_patch16_224"
    reference = timm.create_model(name, pretrained=False, dynamic_img_size=True, dynamic_img_pad=True).eval()
    model = vitlab.create_model(name).eval()
    load_state_dict(model, reference.state_dict())
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        compare(model(x), reference(x), f"{name} at {size[0]}x{size[1]}")


@pytest.mark.parametrize(
    ("name", "config_cls", "model_cls"),
    [
        ("vit_base_patch16_224", "ViTConfig", "ViTForImageClassification"),
        ("deit_base_distilled_patch16_224", "DeiTConfig", "DeiTForImageClassificationWithTeacher"),
    ],
)
def test_hf_base(tmp_path, name, config_cls, model_cls):
    config = getattr(transformers, config_cls)(num_labels=1000)
    reference = getattr(transformers, model_cls)(config).eval()
    reference.save_pretrained(tmp_path)
    model = vitlab.create_model(name, pretrained=tmp_path).eval()  # the directory: config.json gives eps 1e-12
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {config.layer_norm_eps}
    assert load_state_dict(model, reference.state_dict()) == "hf"  # the in-memory names convert too
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        compare(model(x), reference(pixel_values=x).logits, f"{name} transformers {transformers.__version__}")
