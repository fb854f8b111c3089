"""Pale Transformer: counts, sizes, features, attention capture.

PS-Attention is tested against a per-token reading of the paper in tests/layers/test_grouping_pales.py.
"""

import pytest
import torch

import vitlab
from vitlab.analysis.complexity import count_params
from vitlab.layers.grouping.pales import InterlacedGroups

# The paper reports 22M / 48M / 85M parameters and 4.2 / 9.0 / 15.6 GFLOPs (= MACs) at 224.
PAPER = {"pale_tiny_224": (22, 4.2), "pale_small_224": (48, 9.0), "pale_base_224": (85, 15.6)}


@pytest.mark.parametrize("name", PAPER)
def test_parameter_counts_round_to_the_papers(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(count_params(model) / 1e6) == PAPER[name][0]


def test_macs_within_one_percent_of_the_papers_for_pale_tiny():
    gmacs = vitlab.model_info("pale_tiny_224")["gmacs"]
    assert abs(gmacs - PAPER["pale_tiny_224"][1]) / PAPER["pale_tiny_224"][1] < 0.01


def small(**kwargs):
    config = dict(embed_dim=16, depth=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), num_classes=5)
    config.update(kwargs)
    return vitlab.create_model("pale_tiny_224", **config).eval()


def test_capture_attention_rows_sum_to_one_and_padding_gets_nothing():
    model = small()
    with vitlab.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(1, 3, 90, 70))  # stage-1 map 22x17: 4 row groups of 6 rows (2 padded), 3 column groups
    assert {"stages.0.blocks.0.attn.rows", "stages.0.blocks.0.attn.columns"} <= set(maps)
    rows = maps["stages.0.blocks.0.attn.rows"][0]
    assert rows.shape == (4, 1, 6 * 17, 6 * 17)
    for probs in (p for ps in maps.values() for p in ps):
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    real = InterlacedGroups(7, "rows").plan((22, 17), torch.device("cpu")).mask[:, 0, 0]
    assert (rows[:, 0, 0][~real] == 0).all() and (rows[:, 0, 0][real] > 0).all()
    assert maps["stages.3.blocks.0.attn.columns"][0].shape == (1, 2, 9, 9)  # 3x3 map: one group, full attention


def test_features_are_the_stage_outputs():
    model = small()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (last,) = model.forward_intermediates(x, [3])
        torch.testing.assert_close(model.forward_features(x), model.norm(last.permute(0, 2, 3, 1)))


def test_impossible_sizes_and_bad_configurations_are_named():
    model = small()
    with pytest.raises(ValueError, match="at least 3x3 pixels.*got 40x2"):
        model(torch.randn(1, 3, 40, 2))
    with pytest.raises(ValueError, match="num_heads 3"):
        small(embed_dim=18, num_heads=(3, 2, 4, 4))
    with pytest.raises(ValueError, match="one entry per stage"):
        small(pale_size=(7, 7))
