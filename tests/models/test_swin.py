import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import vitlab
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.layers.position import relative_position_index

NAME = "swin_tiny_patch4_window7_224"
FIXTURES = Path(__file__).parents[1] / "parity" / "fixtures"
# Parameter counts of the official code and timm (references/backbones.md), in millions to 2 decimals.
PARAMS = {NAME: 28.29, "swin_small_patch4_window7_224": 49.61, "swin_base_patch4_window7_224": 87.77}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_references(name):
    assert round(vitlab.model_info(name)["params"] / 1e6, 2) == PARAMS[name]


def test_macs_are_counted_with_attention():
    assert round(vitlab.model_info(NAME)["gmacs"], 2) == 4.49  # timm and the official code: 4.491


def small(**kwargs):
    """Swin-T's layout (window 7, 224) at a fraction of its width, so tests stay fast."""
    config = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), num_classes=5)
    config.update(kwargs)
    return vitlab.create_model(NAME, **config).eval()


def test_padding_does_not_leak_into_the_crop_of_a_padded_input():
    # A multiple of the patch size only: the windows pad inside every block; the patch embedding of an
    # input padded by hand to the next patch multiple gives the same map, hence the same logits.
    model = small()
    x = torch.randn(1, 3, 197, 222)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(torch.nn.functional.pad(x, (0, 2, 0, 3))))


def test_stage_maps_and_windows_at_a_non_multiple_size():
    model = small()
    maps = model.forward_intermediates(torch.randn(1, 3, 200, 300), [0, 1, 2, 3])
    assert [m.shape[-2:] for m in maps] == [(50, 75), (25, 38), (13, 19), (7, 10)]
    attn = model.layers[3].blocks[1].attn
    plan = attn.grouping.plan((7, 10), torch.device("cpu"))
    assert plan.window == (7, 7) and plan.shift == (0, 3) and plan.padded == (7, 14)


def test_stage_4_shifts_only_when_its_map_is_larger_than_the_window():
    attn = small().layers[3].blocks[1].attn
    assert attn.grouping.plan((7, 7), torch.device("cpu")).mask is None  # 224: one window, as in the references
    assert attn.grouping.plan((14, 14), torch.device("cpu")).shift == (3, 3)  # 448


def test_features_only_gives_four_nchw_maps_at_strides_4_to_32():
    extractor = vitlab.create_model(NAME, features_only=True, embed_dim=16, depths=(2,) * 4, num_heads=(1, 2, 2, 4))
    assert extractor.out_indices == (0, 1, 2, 3)
    assert extractor.channels == [16, 32, 64, 128] and extractor.reductions == [4, 8, 16, 32]
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, 224, 160))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 56, 40), (1, 32, 28, 20), (1, 64, 14, 10), (1, 128, 7, 5)]


def test_last_feature_map_is_the_classifier_input_before_its_norm():
    model = small()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        (last,) = model.forward_intermediates(x, [3])
        torch.testing.assert_close(model.norm(last.permute(0, 2, 3, 1)), model.forward_features(x))


def test_capture_attention_reports_per_window_probabilities():
    model = small()
    with torch.no_grad(), vitlab.capture_attention(model) as maps:
        model(torch.randn(2, 3, 224, 224))
    assert len(maps) == 8
    probs = maps["layers.0.blocks.1.attn"][0]  # 56x56 map: 64 windows of 49 tokens per image
    assert probs.shape == (2 * 64, 1, 49, 49)
    torch.testing.assert_close(probs.sum(-1), torch.ones(128, 1, 49))
    assert maps["layers.3.blocks.0.attn"][0].shape == (2, 4, 49, 49)


def test_window_7_checkpoint_loads_into_a_window_12_model():
    source = small()
    target = small(img_size=384, window_size=12)
    load_state_dict(target, source.state_dict())
    table = target.layers[0].blocks[0].attn.relative_position_bias_table
    original = source.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (23 * 23, 1)
    torch.testing.assert_close(table[11 * 23 + 11], original[6 * 13 + 6])  # bias of a token to itself
    with torch.no_grad():
        assert target(torch.randn(1, 3, 384, 384)).shape == (1, 5)


def test_a_model_for_a_small_image_computes_what_the_224_model_does_at_that_size():
    # At img_size 112 stage 4 is 4x4 and its window shrinks to 4: the 224 checkpoint's 13x13 tables are
    # cropped to their central offsets, which are the only ones a 4x4 map uses.
    source = small()
    target = small(img_size=112)
    assert target.layers[3].blocks[0].attn.relative_position_bias_table.shape == (7 * 7, 4)
    load_state_dict(target, source.state_dict())
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def fixture_state(name):
    with safe_open(FIXTURES / f"{name}.safetensors", "pt") as f:
        meta = f.metadata()
        state = {k.removeprefix("state."): f.get_tensor(k) for k in f.keys() if k.startswith("state.")}  # noqa: SIM118
    return vitlab.create_model(meta["model"], **json.loads(meta["kwargs"])), state


@pytest.mark.parametrize("key", ["layers.0.blocks.1.attn_mask", "layers.1.blocks.0.attn.relative_position_index"])
def test_official_buffers_that_differ_from_the_recomputed_ones_are_an_error(key):
    model, state = fixture_state(f"{NAME}-official")
    assert load_state_dict(model, dict(state)) == "official"
    state[key] = state[key].clone()
    state[key].view(-1)[5] += 1
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_state_dict(model, state)


def test_hf_hub_files_with_the_legacy_index_buffer_load():
    model, state = fixture_state(f"{NAME}-hf")
    key = "swin.encoder.layers.0.blocks.0.attention.self.relative_position_index"
    state[key] = relative_position_index(model.layers[0].blocks[0].attn.window_size)
    assert load_state_dict(model, state) == "hf"
    state[key] = state[key].flip(0)
    with pytest.raises(CheckpointError, match="differs from the buffer a standard Swin computes"):
        load_state_dict(model, state)


def test_unknown_keys_in_a_converted_checkpoint_are_reported():
    model, state = fixture_state(f"{NAME}-official")
    state["absolute_pos_embed"] = torch.zeros(1, 256, 8)  # the official `ape=True` option, which vitlab lacks
    with pytest.raises(CheckpointError, match="unexpected keys.*absolute_pos_embed"):
        load_state_dict(model, state)


def test_a_relative_table_of_no_square_window_is_reported_by_key():
    model = small()
    state = model.state_dict()
    state["layers.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(10, 1)
    with pytest.raises(CheckpointError, match=r"layers\.0\.blocks\.0\.attn\.relative_position_bias_table"):
        load_state_dict(model, state)


def test_drop_path_rises_with_depth_and_tables_skip_weight_decay():
    model = small(drop_path_rate=0.1)
    assert model.layers[0].blocks[0].drop_path1.drop_prob == 0.0
    assert model.layers[3].blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    assert len(model.no_weight_decay()) == 8
    assert all(n.endswith("relative_position_bias_table") for n in model.no_weight_decay())
    assert model.classifier_keys == ("head.fc",)


def test_every_reference_layout_has_a_fixture():
    layouts = set()
    for path in FIXTURES.glob("swin_*.safetensors"):
        with safe_open(path, "pt") as f:
            layouts.add(f.metadata()["layout"])
    assert layouts == {"native", "official", "hf"}


def test_torch_export_traces_the_window_grouping():
    model = small(depths=(2, 2, 1, 1))
    x = torch.randn(1, 3, 100, 140)  # maps 25x35 and 13x18: padded and shifted windows
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), model(x))
