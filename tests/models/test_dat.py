"""DAT: counts, the release's checkpoint layout, sampling positions, deformable sampling, loading.

The whole model is checked against the authors' code by the parity fixtures (tests/parity,
tools/fixtures/dat.py); the contract test covers sizes, features, checkpointing and capture.
"""

import json
from pathlib import Path

import pytest
import torch

import vitlab
from tests.parity.test_fixtures import read_fixture
from vitlab.analysis.complexity import count_params
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.layers.attention import POSITIONS_SUFFIX, AttentionLayer
from vitlab.layers.grouping.deformable import DeformablePoints
from vitlab.models.dat import DeformableAttention
from vitlab.registry import get_entry

FIXTURE = Path(__file__).parents[1] / "parity" / "fixtures" / "dat_tiny-official-64px.safetensors"

# DAT-T: the figure; S and B: the release's code counted (references/backbones.md).
PARAMS = {"dat_tiny": 28.32, "dat_small": 49.70, "dat_base": 87.88}


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return vitlab.create_model(name, **kwargs)


def tiny_model(name="dat_tiny", **kwargs):
    torch.manual_seed(0)
    return vitlab.create_model(name, num_classes=5, **{**get_entry(name).tiny, **kwargs}).eval()


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_release(name):
    assert round(count_params(meta_model(name)) / 1e6, 2) == PARAMS[name]


def test_macs_match_the_release():
    assert round(vitlab.model_info("dat_tiny")["gmacs"], 2) == 4.56  # the release's code, counted the same way: 4.563


def test_state_dict_has_the_release_layout():
    model = meta_model("dat_tiny")
    keys = model.state_dict().keys()
    assert len(keys) == 219  # as the release's dat_tiny
    for key in [
        "patch_proj.0.weight",
        "patch_proj.1.norm.weight",
        "stages.0.layer_norms.3.norm.bias",
        "stages.0.mlps.1.chunk.linear2.weight",
        "stages.0.attns.1.attn_mask",
        "stages.1.attns.0.relative_position_index",
        "stages.2.attns.5.rpe_table",
        "stages.2.attns.5.conv_offset.0.weight",
        "stages.2.attns.5.conv_offset.1.norm.weight",
        "stages.2.attns.5.conv_offset.3.weight",
        "stages.3.attns.1.proj_v.bias",
        "down_projs.2.0.weight",
        "down_projs.2.1.norm.bias",
        "cls_norm.norm.weight",
        "cls_head.bias",
    ]:
        assert key in keys, key
    assert model.stages[2].attns[5].rpe_table.shape == (12, 27, 27)
    assert model.stages[0].attns[1].attn_mask.shape == (64, 49, 49)
    assert "stages.0.attns.0.attn_mask" not in keys  # only the shifted blocks carry a mask
    assert model.stages[0].attns[1].grouping.shift == (4, 4)  # ceil(7 / 2), not Swin's 3


def reference_positions(meta, names, size):
    """The release's sampling positions (normalised (y, x)) as (x, y) pixels of each D block's map."""
    positions = [torch.tensor(p, dtype=torch.float64) for p in json.loads(meta["reference_positions"])]
    assert len(positions) == len(names)
    out = []
    for p, name in zip(positions, names, strict=True):
        stride = 4 * 2 ** int(name.split(".")[1])  # stages.{i}
        H, W = size[0] // stride, size[1] // stride
        out.append(torch.stack(((p[..., 1] + 1) / 2 * (W - 1), (p[..., 0] + 1) / 2 * (H - 1)), -1))
    return out


def test_captured_positions_are_the_releases_and_lie_in_the_map():
    meta, state, inputs, _ = read_fixture(FIXTURE)
    model = vitlab.create_model(meta["model"], **json.loads(meta["kwargs"]))
    load_state_dict(model, state)
    model.double().eval()
    with torch.no_grad(), vitlab.capture_attention(model, positions=True) as maps:
        model(inputs.double())
    names = [n for n, m in model.named_modules() if isinstance(m, DeformableAttention)]
    layers = [n for n, m in model.named_modules() if isinstance(m, AttentionLayer)]
    assert set(maps) == set(layers) | {n + POSITIONS_SUFFIX for n in names}
    captured = [maps[n + POSITIONS_SUFFIX][0] for n in names]
    for ours, theirs in zip(captured, reference_positions(meta, names, inputs.shape[-2:]), strict=True):
        assert ours.shape == theirs.shape  # (batch, groups, Hk, Wk, 2)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_positions_stay_within_the_map_even_at_the_largest_offsets():
    """With the released offset range factor 2, offsets move a point at most one pixel: still inside the map."""
    model = tiny_model()
    layer = model.stages[2].attns[1]
    with torch.no_grad():
        layer.conv_offset[3].weight.mul_(1e4)  # tanh saturates: the bound is reached
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad(), vitlab.capture_attention(model, positions=True) as maps:
        model(x)
    pixels = maps["stages.2.attns.1" + POSITIONS_SUFFIX][0]
    H, W = 64 // 16, 96 // 16
    assert pixels.shape == (2, 2, H, W, 2)
    x_px, y_px = pixels.unbind(-1)
    assert (x_px >= -0.5).all() and (x_px <= W - 0.5).all()
    assert (y_px >= -0.5).all() and (y_px <= H - 0.5).all()
    assert x_px.min() < 0 or x_px.max() > W - 1  # the bound is used, beyond the outermost pixel centres


def test_positions_are_only_recorded_when_asked():
    model = tiny_model()
    with torch.no_grad(), vitlab.capture_attention(model) as maps:
        model(torch.randn(1, 3, 64, 64))
    assert not any(k.endswith(POSITIONS_SUFFIX) for k in maps)
    assert all(m.position_store is None for m in model.modules() if isinstance(m, DeformableAttention))


def bilinear(image, x, y):
    """Read a (C, H, W) map at pixel (x, y), zero outside, by the four-neighbour formula."""
    C, H, W = image.shape
    x0, y0 = int(torch.floor(x)), int(torch.floor(y))
    value = torch.zeros(C, dtype=image.dtype)
    for yi in (y0, y0 + 1):
        for xi in (x0, x0 + 1):
            if 0 <= yi < H and 0 <= xi < W:
                value += image[:, yi, xi] * (1 - abs(x - xi)) * (1 - abs(y - yi))
    return value


def test_deformable_sampling_reads_pixel_centres_at_plus_minus_one():
    """align_corners=True, as the release: normalised -1 and 1 are the first and last pixel centres."""
    scheme = DeformablePoints(groups=2, offset_range_factor=2.0)
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    positions = torch.rand(2, 4, 6, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2  # some outside the map
    sampled = scheme.sample(maps, positions)
    pixels = scheme.to_pixels(positions, (5, 7))
    for b in range(2):
        for i in range(4):
            for j in range(6):
                x, y = pixels[b, i, j]
                torch.testing.assert_close(sampled[b, :, i, j], bilinear(maps[b], x, y))


def test_reference_points_are_pixel_centres():
    points = DeformablePoints(1, 2.0).plan((4, 5), "cpu").points
    torch.testing.assert_close(points[2, 3], torch.tensor([(2 + 0.5) / 4 * 2 - 1, (3 + 0.5) / 5 * 2 - 1]).double())


def test_too_small_inputs_are_refused_with_the_size_accepted():
    with pytest.raises(ValueError, match="at least 32x32 pixels, got 31x40"):
        tiny_model()(torch.randn(1, 3, 31, 40))


def dat_plus_plus_keys(state):
    """A DAT++-style state dict (LeapLabTHU/DAT main branch): its convolutional patch stem, layer scales
    and local perception units, around the same stages."""
    out = {k: v for k, v in state.items() if not k.startswith("patch_proj.")}
    out["patch_proj.0.weight"] = torch.zeros(4, 3, 3, 3)
    out["patch_proj.1.norm.weight"] = torch.zeros(4)
    out["patch_proj.3.weight"] = torch.zeros(8, 4, 3, 3)
    out["patch_proj.4.norm.weight"] = torch.zeros(8)
    for i, depth in enumerate((2, 2, 2, 2)):
        for d in range(depth):
            out[f"stages.{i}.local_perception_units.{d}.weight"] = torch.zeros(8 * 2**i, 1, 3, 3)
            out[f"stages.{i}.layer_scales.{2 * d}.weight"] = torch.zeros(8 * 2**i)
    return out


def test_a_dat_plus_plus_checkpoint_is_refused_with_the_keys_named():
    model = tiny_model()
    with pytest.raises(CheckpointError) as err:
        load_state_dict(model, dat_plus_plus_keys(model.state_dict()), source="dat_pp.pth")
    message = str(err.value)
    assert "unexpected keys" in message and "patch_proj.3.weight" in message and "local_perception_units" in message
    assert "patch_proj.0.weight (checkpoint (4, 3, 3, 3), model (8, 3, 4, 4))" in message


def test_another_variants_checkpoint_is_refused_with_the_keys_named():
    tiny, small = meta_model("dat_tiny"), meta_model("dat_small")
    with pytest.raises(CheckpointError) as err:
        load_state_dict(tiny, small.state_dict(), source="dat_small.pth")
    assert "unexpected keys (216): stages.2.layer_norms.12.norm.weight" in str(err.value)
    base = meta_model("dat_base")
    with pytest.raises(CheckpointError, match=r"mis-shaped keys .*patch_proj\.0\.weight"):
        load_state_dict(small, base.state_dict(), source="dat_base.pth")


def test_a_checkpoint_for_another_size_is_fitted_as_the_release_does():
    source = tiny_model(img_size=64)
    target = tiny_model(img_size=96)
    load_state_dict(target, source.state_dict())
    assert target.stages[2].attns[1].rpe_table.shape == (2, 11, 11)  # resized from (2, 7, 7)
    assert torch.equal(target.stages[0].attns[1].attn_mask, tiny_model(img_size=96).stages[0].attns[1].attn_mask)
    for key, value in source.state_dict().items():  # everything not sized by img_size is loaded as is
        if not key.endswith(("rpe_table", "attn_mask")):
            assert torch.equal(target.state_dict()[key], value), key


def naive_deformable_attention(layer, x):
    """DAT section 3.2 token by token, from the layer's weights: offsets, bilinear keys, bias, softmax.

    x is one (H, W, C) map; returns the (H, W, C) output and the (heads, H * W, points) probabilities.
    Key point n of group g sits at reference point n moved by group g's offset there; the sampled
    feature of point n holds each group's channels read at that group's point.
    """
    H, W, C = x.shape
    G, heads, d = layer.groups, layer.heads, layer.head_dim
    Cg, hg, N = C // G, heads // G, H * W
    image = x.permute(2, 0, 1)  # (C, H, W)
    q = torch.nn.functional.conv2d(image[None], layer.proj_q.weight, layer.proj_q.bias)[0].flatten(1)
    offsets = layer.conv_offset(q.reshape(G, Cg, H, W))  # (G, 2, H, W), the network as a module
    factor = layer.sampling.offset_range_factor
    points = [  # normalised (y, x) of every group's key points
        [
            ((n // W + 0.5) / H * 2 - 1 + torch.tanh(offsets[g, 0].flatten()[n]) * factor / H,
             (n % W + 0.5) / W * 2 - 1 + torch.tanh(offsets[g, 1].flatten()[n]) * factor / W)
            for n in range(N)
        ]
        for g in range(G)
    ]  # fmt: skip
    features = [
        torch.cat([bilinear(image[g * Cg : (g + 1) * Cg], (u + 1) / 2 * (W - 1), (y + 1) / 2 * (H - 1))
                   for g, (y, u) in enumerate(points[g][n] for g in range(G))])
        for n in range(N)
    ]  # fmt: skip
    keys = [layer.proj_k.weight[:, :, 0, 0] @ f + layer.proj_k.bias for f in features]
    values = [layer.proj_v.weight[:, :, 0, 0] @ f + layer.proj_v.bias for f in features]
    Th, Tw = layer.rpe_table.shape[1:]

    def table_bias(h, dy, dx):  # the displacement, halved into [-1, 1], read as table pixels (align_corners)
        return bilinear(layer.rpe_table[h : h + 1], (dx / 2 + 1) / 2 * (Tw - 1), (dy / 2 + 1) / 2 * (Th - 1))[0]

    out = torch.zeros(C, N, dtype=x.dtype)
    probs = torch.zeros(heads, N, N, dtype=x.dtype)
    for h in range(heads):
        rows, g = slice(h * d, (h + 1) * d), h // hg
        for t in range(N):
            qy, qx = (t // W + 0.5) / H * 2 - 1, (t % W + 0.5) / W * 2 - 1
            logits = torch.stack([
                q[rows, t] @ keys[n][rows] * d**-0.5 + table_bias(h, qy - py, qx - px)
                for n, (py, px) in enumerate(points[g])
            ])  # fmt: skip
            probs[h, t] = logits.softmax(0)
            out[rows, t] = sum(probs[h, t, n] * values[n][rows] for n in range(N))
    y = layer.proj_out.weight[:, :, 0, 0] @ out + layer.proj_out.bias[:, None]
    return y.T.reshape(H, W, C), probs


def test_deformable_attention_is_the_papers_equation_token_by_token():
    model = tiny_model(img_size=64).double()
    layer = model.stages[2].attns[1]  # 2 heads in 2 offset groups, a (2, 7, 7) bias table
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        x = torch.randn(1, 3, 4, 32, dtype=torch.float64)
        with vitlab.capture_attention(layer) as maps:
            ours = layer(x)
        expected, probs = naive_deformable_attention(layer, x[0])
    torch.testing.assert_close(ours[0], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(maps[""][0][0], probs, rtol=1e-10, atol=1e-10)
