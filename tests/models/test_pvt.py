"""PVT v1 and v2: counts, the spatial-reduction attention against the paper's equations read token by
token, positional tables at other sizes, features, attention capture, layouts and bad checkpoints.

Parity with timm, the official code and HF transformers is in tests/parity (fixtures from
tools/fixtures/pvt.py).
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import vitlab
from vitlab.analysis.complexity import count_params
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.layers.grouping.reduction import SpatialReductionAttention
from vitlab.layouts import convert_state_dict

FIXTURES = Path(__file__).parents[1] / "parity" / "fixtures"

# The figures, in millions (official code = timm = HF; references/backbones.md sections 4-5).
PARAMS = {
    "pvt_tiny": 13.23,
    "pvt_small": 24.49,
    "pvt_medium": 44.21,
    "pvt_large": 61.37,
    "pvt_v2_b0": 3.67,
    "pvt_v2_b1": 14.01,
    "pvt_v2_b2": 25.36,
    "pvt_v2_b3": 45.24,
    "pvt_v2_b4": 62.56,
    "pvt_v2_b5": 81.96,
    "pvt_v2_b2_li": 22.55,
}
SMALL = dict(embed_dims=(8, 16, 16, 24), num_heads=(1, 2, 2, 3), depths=(1, 1, 1, 1), num_classes=5)


def small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return vitlab.create_model(name, **{**SMALL, **kwargs}).eval()


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_references(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(count_params(model) / 1e6, 2) == PARAMS[name]


@pytest.mark.parametrize(
    "name, gmacs",
    # FlopCounterMode on the reference, attention unfused: backbones.md (pvt_tiny, b0, b2) and, measured
    # for this family with the same counter, the official pvt_small and timm's pvt_v2_b2_li.
    [("pvt_tiny", 1.93), ("pvt_small", 3.82), ("pvt_v2_b0", 0.57), ("pvt_v2_b2", 4.03), ("pvt_v2_b2_li", 3.89)],
)
def test_macs_match_the_references(name, gmacs):
    assert round(vitlab.model_info(name)["gmacs"], 2) == gmacs


def naive_sra(attn: SpatialReductionAttention, x: torch.Tensor) -> torch.Tensor:
    """PVT v1 eq. 2-4 (and v2's linear variant), one query token and one head at a time.

    SR(x) = Norm(Reshape(x, R) W^S): each R x R patch of the map, flattened, times W^S (the strided
    convolution's weight read as a matrix). Linear SRA: the mean of each cell of a 7x7 partition of
    the map, times the 1x1 weight, LayerNorm, GELU.
    """
    _, H, W, C = x.shape
    if attn.linear:  # maps whose sides divide by 7: every pooling cell is (H/7) x (W/7)
        cells = x[0].view(7, H // 7, 7, W // 7, C).mean(dim=(1, 3)).reshape(49, C)
        reduced = F.gelu(attn.norm(cells @ attn.sr.weight.view(C, C).T + attn.sr.bias))
    else:
        R = attn.sr_ratio
        patches = x[0, : H // R * R, : W // R * R].reshape(H // R, R, W // R, R, C).permute(0, 2, 4, 1, 3)
        w_s = attn.sr.weight.reshape(C, C * R * R)  # (out, in * R * R): the order of the patch's flattening
        reduced = attn.norm(patches.reshape(-1, C * R * R) @ w_s.T + attn.sr.bias)
    q = x[0].reshape(-1, C) @ attn.q.weight.T + attn.q.bias
    k, v = (reduced @ attn.kv.weight.T + attn.kv.bias).chunk(2, dim=-1)
    d = attn.head_dim
    out = torch.zeros(H * W, C, dtype=x.dtype)
    for i in range(H * W):
        for h in range(attn.num_heads):
            heads = slice(h * d, (h + 1) * d)
            scores = torch.stack([q[i, heads] @ k[j, heads] / math.sqrt(d) for j in range(k.shape[0])])
            out[i, heads] = scores.softmax(0) @ v[:, heads]
    return (out @ attn.proj.weight.T + attn.proj.bias).view(1, H, W, C)


@pytest.mark.parametrize("sr_ratio, linear, size", [(4, False, (9, 14)), (2, False, (6, 6)), (1, True, (14, 21))])
def test_spatial_reduction_attention_is_the_papers_equation(sr_ratio, linear, size):
    torch.manual_seed(0)
    attn = SpatialReductionAttention(12, 3, sr_ratio, linear).double().eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(1, *size, 12, dtype=torch.float64)
        torch.testing.assert_close(attn(x), naive_sra(attn, x), rtol=1e-10, atol=1e-10)


def test_reduced_keys_are_what_capture_attention_reports():
    model = small("pvt_tiny")
    with vitlab.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    # stage maps 16x24, 8x12, 4x6, 2x3 with ratios 8, 4, 2, 1; the last stage adds the class token
    shapes = [maps[f"block{i}.0.attn"][0].shape for i in (1, 2, 3, 4)]
    assert shapes == [(1, 1, 384, 6), (1, 2, 96, 6), (1, 2, 24, 6), (1, 3, 7, 7)]
    linear = small("pvt_v2_b2_li")
    with vitlab.capture_attention(linear) as maps, torch.no_grad():
        linear(torch.randn(1, 3, 40, 40))  # 10x10 queries, 7x7 pooled keys, in every stage
    assert maps["stages.0.blocks.0.attn"][0].shape == (1, 1, 100, 49)
    assert maps["stages.3.blocks.0.attn"][0].shape == (1, 3, 4, 49)


def test_v1_tables_made_for_another_size_load_resized_as_the_forward_pass_resizes_them():
    source = small("pvt_tiny", img_size=64)
    target = small("pvt_tiny", img_size=96)
    assert target.pos_embed4.shape == (1, 1 + 3 * 3, 24)
    load_state_dict(target, source.state_dict())  # 16x16 .. 2x2 tables resized to 24x24 .. 3x3 at load
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():  # the 64 model resizes its tables to the 96 grids on the fly: the same bilinear map
        torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-6)


def test_v1_last_stage_sees_the_class_token_and_its_features_do_not():
    model = small("pvt_tiny")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        maps = model.forward_intermediates(x, [0, 1, 2, 3])
    assert tokens.shape == (2, 1 + 2 * 2, 24)
    assert [m.shape for m in maps] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4), (2, 24, 2, 2)]
    with torch.no_grad():  # the map is the last stage's patch tokens, before the final norm
        stage4 = next(o for i, (o, _) in enumerate(model.iter_stage_outputs(x)) if i == 3)
    torch.testing.assert_close(maps[3], stage4[:, 1:].transpose(1, 2).reshape(2, 24, 2, 2))
    torch.testing.assert_close(model.forward_head(tokens), model.head(tokens[:, 0]))


def test_v2_features_are_the_stage_normalised_maps_and_the_head_averages_the_last():
    model = small("pvt_v2_b0")
    x = torch.randn(1, 3, 70, 50)  # maps 18x13, 9x7, 5x4, 3x2
    with torch.no_grad():
        maps = model.forward_intermediates(x, [0, 1, 2, 3])
        final = model.forward_features(x)
    assert [tuple(m.shape[-2:]) for m in maps] == [(18, 13), (9, 7), (5, 4), (3, 2)]
    torch.testing.assert_close(maps[3].permute(0, 2, 3, 1), final)
    norm = model.stages[1].norm  # each stage's map leaves its LayerNorm: standardised tokens before the affine
    standard = (maps[1].permute(0, 2, 3, 1) - norm.bias) / norm.weight
    torch.testing.assert_close(standard.mean(-1), torch.zeros(1, 9, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard.var(-1, unbiased=False), torch.ones(1, 9, 7), atol=1e-3, rtol=0)
    torch.testing.assert_close(model(x), model.head(final.mean(dim=(1, 2))))


@pytest.mark.parametrize("name, side", [("pvt_tiny", 32), ("pvt_v2_b0", 29), ("pvt_v2_b2_li", 1)])
def test_smallest_input_is_stated_and_one_pixel_less_is_named(name, side):
    model = small(name)
    assert model.min_input_size == side
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side + 7)).shape == (1, 5)
    if side > 1:
        with pytest.raises(ValueError, match=f"at least {side}x{side} pixels, got {side - 1}x"):
            model(torch.randn(1, 3, side - 1, 64))


def test_v1_last_stage_must_attend_globally():
    with pytest.raises(ValueError, match="sr_ratio must be 1"):
        vitlab.create_model("pvt_tiny", sr_ratios=(8, 4, 2, 2))


def test_layouts_keep_the_reference_names():
    with torch.device("meta"):
        v1 = vitlab.create_model("pvt_tiny").state_dict()
        li = vitlab.create_model("pvt_v2_b2_li").state_dict()
    assert v1["pos_embed1"].shape == (1, 56 * 56, 64) and v1["pos_embed4"].shape == (1, 50, 512)
    assert v1["cls_token"].shape == (1, 1, 512) and v1["block1.0.attn.sr.weight"].shape == (64, 64, 8, 8)
    assert "block4.0.attn.sr.weight" not in v1 and "block4.0.attn.norm.weight" not in v1  # ratio 1: no reduction
    assert {"patch_embed4.proj.weight", "norm.weight", "head.weight", "block3.1.mlp.fc2.bias"} <= set(v1)
    assert li["patch_embed.proj.weight"].shape == (64, 3, 7, 7)
    assert li["stages.1.downsample.proj.weight"].shape == (128, 64, 3, 3)
    assert li["stages.3.blocks.0.attn.sr.weight"].shape == (512, 512, 1, 1)  # linear SRA: a 1x1 conv everywhere
    assert li["stages.0.blocks.0.mlp.dwconv.weight"].shape == (512, 1, 3, 3)
    assert {"stages.2.norm.weight", "head.weight"} <= set(li) and not any("pos_embed" in k for k in li)


def test_a_checkpoint_of_another_variant_or_version_is_refused_by_name():
    b0, b1 = small("pvt_v2_b0"), small("pvt_v2_b0", embed_dims=(8, 16, 16, 32), num_heads=(1, 2, 2, 4))
    with pytest.raises(CheckpointError, match=r"mis-shaped keys.*stages\.3\.downsample\.proj\.weight \(checkpoint"):
        load_state_dict(b0, b1.state_dict())
    with pytest.raises(
        CheckpointError,
        match=r"(?s)a v1 checkpoint \(official layout\) does not fit PyramidVisionTransformerV2.*missing keys.*"
        r"stages\.0\.norm\.weight.*unexpected keys.*pos_embed1, .*cls_token",
    ):
        load_state_dict(b0, small("pvt_tiny").state_dict(), source="a v1 checkpoint")
    with pytest.raises(CheckpointError, match=r"(?s)missing keys.*pos_embed1.*unexpected keys.*stages\.0\."):
        load_state_dict(small("pvt_tiny"), b0.state_dict())


def test_the_official_v2_layout_is_detected_and_renamed():
    model = small("pvt_v2_b0")
    official = {}
    for key, value in model.state_dict().items():
        key = key.replace("patch_embed.", "patch_embed1.").replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
        for i in range(4):
            key = key.replace(f"stages.{i}.blocks.", f"block{i + 1}.").replace(f"stages.{i}.norm.", f"norm{i + 1}.")
            key = key.replace(f"stages.{i}.downsample.", f"patch_embed{i + 1}.")
        official[key] = value
    assert "block2.0.mlp.dwconv.dwconv.weight" in official and "norm4.bias" in official
    converted, layout = convert_state_dict(model, official)
    assert layout == "official" and converted.keys() == model.state_dict().keys()


def test_every_reference_layout_has_a_fixture():
    found = set()
    for path in FIXTURES.glob("pvt_*.safetensors"):
        with safe_open(path, "pt") as f:
            found.add((f.metadata()["model"].startswith("pvt_v2"), f.metadata()["layout"]))
    assert found == {(False, "native"), (False, "hf"), (True, "native"), (True, "official"), (True, "hf")}
