import pytest

import vitlab


def test_list_models_by_pattern_and_substring():
    assert "deit_tiny_distilled_patch16_224" in vitlab.list_models("deit*")
    assert vitlab.list_models("distilled") == vitlab.list_models("*distilled*")
    assert all(n.startswith("vit_") for n in vitlab.list_models("vit_*"))
    assert vitlab.list_models("no_such_model") == []


def test_unknown_model_suggests_names():
    with pytest.raises(KeyError, match="unknown model 'deit_tiny'.*deit_tiny_patch16_224"):
        vitlab.create_model("deit_tiny")


def test_model_info_fields():
    info = vitlab.model_info("vit_base_patch16_224")
    assert info["input_size"] == (3, 224, 224)
    assert round(info["params"] / 1e6, 2) == 86.57
    assert 17.5 < info["gmacs"] < 17.6  # DeiT's table quotes 17.6G for ViT-B/16
    assert "Dosovitskiy" in info["reference"]
    assert vitlab.model_info("vit_base_patch16_224", img_size=384)["input_size"] == (3, 384, 384)
    grey = vitlab.model_info("vit_base_patch16_224", in_chans=1)
    assert grey["input_size"] == (1, 224, 224)
    # Only the patch embedding changes: 768 x (3 - 1) x 16 x 16 weights and MACs per patch fewer.
    assert info["params"] - grey["params"] == 768 * 2 * 256
    assert round((info["gmacs"] - grey["gmacs"]) * 1e9) == 196 * 768 * 2 * 256


def test_overrides_reach_the_constructor():
    model = vitlab.create_model("vit_tiny_patch16_224", num_classes=3, img_size=96, drop_path_rate=0.2)
    assert model.head.out_features == 3 and model.grid_size == (6, 6)
    assert model.entry.name == "vit_tiny_patch16_224"
