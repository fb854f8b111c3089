"""Pale Transformer: PS-Attention against a naive per-token reading of the paper, counts, sizes, features."""

import pytest
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.analysis.complexity import count_params
from vitlab.layers.local import pale_key_mask
from vitlab.models.pale import PaleShapedAttention


def naive_pale_attention(layer: PaleShapedAttention, x: torch.Tensor, pale_size: int) -> torch.Tensor:
    """PS-Attention token by token (Wu et al. 2022).

    The rows of an H x W map form N_r = ceil(H / s_r) groups of interlaced rows, row y in group
    y mod N_r (columns likewise); a token's pale is its row group together with its column group.
    The first half of the channels (and heads) attends over the row group, the second half over
    the column group; the two are concatenated and projected.
    """
    B, H, W, C = x.shape
    half, heads = C // 2, layer.rows.num_heads
    q, k, v = layer.qkv(x).chunk(3, dim=-1)
    n_rows, n_cols = -(-H // pale_size), -(-W // pale_size)
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    # Flat indices of the tokens in each interlaced row group and each interlaced column group.
    row_groups = [torch.nonzero((rows % n_rows == g).flatten())[:, 0] for g in range(n_rows)]
    column_groups = [torch.nonzero((cols % n_cols == g).flatten())[:, 0] for g in range(n_cols)]
    q, k, v = (t.reshape(B, H * W, C) for t in (q, k, v))
    out = torch.zeros(B, H * W, C)
    for y in range(H):
        for x_ in range(W):
            token = y * W + x_
            pale = (
                (row_groups[y % n_rows], slice(0, half), layer.rows),
                (column_groups[x_ % n_cols], slice(half, C), layer.columns),
            )
            for members, channels, branch in pale:
                keys = k[:, members, channels].reshape(B, -1, heads, half // heads)
                values = v[:, members, channels].reshape(B, -1, heads, half // heads)
                query = q[:, token, channels].reshape(B, 1, heads, half // heads)
                weights = torch.einsum("bqhd,bkhd->bhqk", query, keys).mul(branch.scale).softmax(-1)
                out[:, token, channels] = torch.einsum("bhqk,bkhd->bqhd", weights, values).reshape(B, half)
    return layer.proj(out.view(B, H, W, C))


@pytest.mark.parametrize(("size", "pale_size"), [((14, 14), 7), ((10, 13), 4), ((5, 3), 7), ((8, 6), 2)])
def test_ps_attention_matches_the_per_token_definition(size, pale_size):
    layer = PaleShapedAttention(dim=16, num_heads=4, pale_size=pale_size).eval()
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        assert max_rel_error(layer(x), naive_pale_attention(layer, x, pale_size)) < 1e-4


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
    real = pale_key_mask((22, 17), (24, 17), 4, "rows", torch.device("cpu"))[:, 0, 0]
    assert (rows[:, 0, 0][~real] == 0).all() and (rows[:, 0, 0][real] > 0).all()
    assert maps["stages.3.blocks.0.attn.columns"][0].shape == (1, 2, 9, 9)  # 3x3 map: one group, full attention


def test_pale_masks_are_built_once_per_size():
    model = small()
    x = torch.randn(1, 3, 90, 70)
    pale_key_mask.cache_clear()
    with torch.no_grad():
        model(x)
        built = pale_key_mask.cache_info().misses
        model(x)
    info = pale_key_mask.cache_info()
    assert built > 0 and info.misses == built and info.hits >= built


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
