"""CSWin Transformer: counts, any input size (masked padding), features, attention capture, loading.

The stripe attention with LePE is tested against a per-stripe reading in tests/layers/test_grouping_stripes.py.
"""

import pytest
import torch

import vitlab
from vitlab.analysis.complexity import count_params

# Parameter counts of the official code (references/backbones.md), in millions to 2 decimals.
PARAMS = {"cswin_tiny_224": 22.32, "cswin_small_224": 34.64, "cswin_base_224": 77.38}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_official_code(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(count_params(model) / 1e6, 2) == PARAMS[name]


def test_macs_match_the_official_code():
    assert round(vitlab.model_info("cswin_tiny_224")["gmacs"], 2) == 4.32  # official code, unfused: 4.324


def test_state_dict_has_the_official_layout():
    with torch.device("meta"):
        keys = vitlab.create_model("cswin_tiny_224").state_dict().keys()
    assert len(keys) == 418  # as the official CSWin_64_12211_tiny_224
    for key in [
        "stage1_conv_embed.0.weight",
        "stage1_conv_embed.2.bias",
        "stage1.0.qkv.weight",
        "stage3.20.attns.0.get_v.weight",
        "stage3.20.attns.1.get_v.bias",
        "stage4.0.attns.0.get_v.weight",
        "merge3.conv.weight",
        "merge3.norm.weight",
        "norm.weight",
        "head.bias",
    ]:
        assert key in keys
    assert "stage4.0.attns.1.get_v.weight" not in keys  # the last stage has one full-attention branch


def small(name="cswin_tiny_224", **kwargs):
    config = dict(embed_dim=16, depth=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), num_classes=5)
    config.update(kwargs)
    return vitlab.create_model(name, **config).eval()


def test_full_attention_is_chosen_per_stage():
    assert [len(small().get_submodule(f"stage{i}")[0].attns) for i in (1, 2, 3, 4)] == [2, 2, 2, 1]
    full3 = small(full_attention=(False, False, True, True))  # e.g. the official code's at 112: stage 3 is 7x7
    assert len(full3.stage3[0].attns) == 1 and full3.stage3[0].attns[0].get_v.in_channels == 64


def test_padded_keys_get_no_attention_and_rows_sum_to_one():
    model = small(num_heads=(2, 2, 4, 4))
    with vitlab.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(1, 3, 90, 70))  # stage-2 map 11x9: vertical stripes of 2 columns, the last one padded
    probs = maps["stage2.0.attns.0"][0]
    assert probs.shape == (5, 1, 22, 22)  # 5 stripes of 11x2 tokens, 1 head
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 1, 22))
    last = probs[-1].view(1, 22, 11, 2)
    assert (last[..., 1] == 0).all() and (last[..., 0] > 0).all()


def test_capture_attention_reports_every_branch():
    model = small()
    x = torch.randn(2, 3, 64, 64)
    with vitlab.capture_attention(model) as maps, torch.no_grad():
        logits = model(x)
    assert set(maps) == {"stage1.0.attns.0", "stage1.0.attns.1", "stage2.0.attns.0", "stage2.0.attns.1"} | {
        f"stage3.{j}.attns.{b}" for j in range(2) for b in range(2)
    } | {"stage4.0.attns.0"}
    assert maps["stage1.0.attns.0"][0].shape == (2 * 16, 1, 16, 16)  # 16x16 map, vertical stripes of width 1
    assert maps["stage4.0.attns.0"][0].shape == (2, 4, 4, 4)  # 2x2 map, full attention, 4 heads
    for probs in (p for ps in maps.values() for p in ps):
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))  # recording does not change the outputs


def test_features_are_the_stage_outputs():
    model = small()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (last,) = model.forward_intermediates(x, [3])
        torch.testing.assert_close(model.forward_features(x), model.norm(last.permute(0, 2, 3, 1)))


def test_impossible_sizes_and_bad_configurations_are_named():
    model = small()
    with pytest.raises(ValueError, match="at least 3x3 pixels.*got 2x40"):
        model(torch.randn(1, 3, 2, 40))
    with pytest.raises(ValueError, match="num_heads 3 is odd"):
        small(embed_dim=18, num_heads=(3, 2, 4, 4))
    with pytest.raises(ValueError, match="one entry per stage"):
        small(depth=(1, 1, 1))


def test_official_training_checkpoints_load_their_ema_weights(tmp_path):
    source = small()
    path = tmp_path / "cswin.pth"
    ema = {k: v + 1 for k, v in source.state_dict().items()}
    torch.save({"state_dict": source.state_dict(), "state_dict_ema": ema, "epoch": 299}, path)
    model = small()
    assert vitlab.load_checkpoint(model, path, use_ema=True) == "native"
    torch.testing.assert_close(model.head.bias, source.head.bias + 1)


def test_the_registry_names_the_release_file_and_its_ema_weights():
    """The download itself (a local server serving this entry's file, EMA taken) is tested in tests/test_hub.py."""
    weights = vitlab.registry.get_entry("cswin_tiny_224").weights[0]
    assert weights.url.endswith("/v0.1.0/cswin_tiny_224.pth") and weights.ema and weights.layout == "official"


def test_a_224_checkpoint_loads_into_the_384_configuration():
    trained = small(img_size=224, split_size=(1, 2, 7, 7))
    model = small(img_size=384, split_size=(1, 2, 12, 12))
    vitlab.checkpoint.load_state_dict(model, trained.state_dict())  # strict: every key and shape fits
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 5)
