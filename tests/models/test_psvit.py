"""PS-ViT: counts, the official layout and grid, the sampler against a per-point reading, point grids
at other sizes, the captured sampling positions, and checkpoints of another variant refused.

Parity with the official code (CUDA sampler transcribed) is in tests/parity (tools/fixtures/psvit.py).
"""

import math

import pytest
import torch

import vitlab
from tests.helpers import graph_branch_error
from vitlab.analysis.complexity import count_params
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.models.psvit import bilinear_sample, grid_points, initial_points, rounded_points

# Parameter counts in millions (references/backbones.md section 11; the README's 21.3M for every B
# variant: the iterations share their weights and the points are a buffer). B/10 is not in the
# release; its count is the same architecture's.
PARAMS = {"ps_vit_ti_14": 4.78, "ps_vit_b_10": 21.34, "ps_vit_b_14": 21.34, "ps_vit_b_16": 21.34, "ps_vit_b_18": 21.34}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_official_code(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(count_params(model) / 1e6, 2) == PARAMS[name]


def test_macs_match_the_official_code():  # official code with a grid_sample stand-in: 1.565 and 5.380
    assert round(vitlab.model_info("ps_vit_ti_14")["gmacs"], 2) == 1.57
    assert round(vitlab.model_info("ps_vit_b_14")["gmacs"], 2) == 5.38


def test_state_dict_has_the_official_layout():
    with torch.device("meta"):
        state = vitlab.create_model("ps_vit_ti_14").state_dict()
    assert len(state) == 202  # as the official ps_vit_ti_14
    assert state["point_coord"].shape == (1, 196, 2)
    for i in range(4):  # the shared position layer, listed under every iteration
        assert state[f"ps_layers.{i}.position_layer.weight"].shape == state["pos_layer.weight"].shape == (192, 2)
        assert f"ps_layers.{i}.transformer_layer.attn.qkv.weight" in state
        assert f"ps_layers.{i}.transformer_layer.attn.qkv.bias" not in state
        assert (f"ps_layers.{i}.offset_layer.bias" in state) == (i < 3)  # the last iteration predicts none
    for key in ["cls_token", "stem.0.weight", "stem.1.running_var", "stem.4.downsample.0.weight",
                "stem.5.conv3.weight", "trans_layers.7.mlp.fc2.bias", "norm.weight", "head.bias"]:  # fmt: skip
        assert key in state
    assert "stem.5.downsample.0.weight" not in state  # Ti's second bottleneck keeps its width (192)


def test_the_shared_position_layer_is_one_module():
    model = vitlab.create_model("ps_vit_b_14", depth=6, num_iters=3)
    assert all(layer.position_layer is model.pos_layer for layer in model.ps_layers)


def test_initial_points_are_the_official_grid():
    """Centres of 4x4-pixel cells of the 56x56 map, (y, x), x-major: point k = (k % 14, k // 14) cells."""
    model = vitlab.create_model("ps_vit_ti_14")
    k = torch.arange(196)
    expected = torch.stack([(k % 14 + 0.5) * 4, (k // 14 + 0.5) * 4], dim=-1).float()
    assert torch.equal(model.point_coord[0], expected)
    assert torch.equal(initial_points(14, 14, 56, 56), model.point_coord)
    assert initial_points(14, 14, 56, 56) is initial_points(14, 14, 56, 56)  # cached per size


def naive_bilinear(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """The paper's bilinear interpolation at one point, neighbours off the map reading zero."""
    _, height, width = fmap.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(fmap.shape[0], dtype=fmap.dtype)
    for row, col in [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]:
        if 0 <= row < height and 0 <= col < width:
            out += (1 - abs(y - row)) * (1 - abs(x - col)) * fmap[:, row, col]
    return out


def test_the_sampler_is_bilinear_interpolation_with_zeros_outside():
    torch.manual_seed(0)
    fmap = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    points = torch.rand(2, 40, 2, dtype=torch.float64) * torch.tensor([8.0, 10.0]) - 1.5  # some off the map
    points[0, :4] = torch.tensor([[0.0, 0.0], [4.0, 6.0], [-1.0, 2.0], [2.5, 7.0]], dtype=torch.float64)
    sampled = bilinear_sample(fmap, points)
    for b in range(2):
        for n in range(40):
            y, x = points[b, n].tolist()
            torch.testing.assert_close(sampled[b, n], naive_bilinear(fmap[b], y, x), rtol=0, atol=1e-14)


def test_the_points_keep_their_spacing_at_other_sizes():
    """At img_size the release's 14x14 points; elsewhere the stride img_size / 14 = 16 pixels."""
    extractor = vitlab.create_model("ps_vit_ti_14", features_only=True, embed_dim=16, depth=3, num_iters=2,
                                    num_heads=2, stem_width=8, stem_channels=16).eval()  # fmt: skip
    assert set(extractor.reductions) == {16.0}
    for size, grid in [((224, 224), (14, 14)), ((96, 160), (6, 10)), ((20, 8), (1, 1))]:
        with torch.no_grad():
            maps = extractor(torch.randn(1, 3, *size))
        assert all(m.shape[-2:] == grid for m in maps)


def test_feature_maps_put_each_point_at_its_row_and_column():
    """With a blank image (the stem gives zeros at init) and the transformer an identity, a token is its
    position encoding: channel 0 reads y / height, channel 1 x / width, which must grow down and across."""
    model = vitlab.create_model("ps_vit_b_14", img_size=(96, 64), num_point_h=5, num_point_w=4, embed_dim=8,
                                depth=2, num_iters=2, num_heads=2, stem_width=8, stem_channels=8).eval()  # fmt: skip
    with torch.no_grad():
        block = model.ps_layers[0].transformer_layer
        for linear in (block.attn.proj, block.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
        model.pos_layer.weight.zero_()
        model.pos_layer.bias.zero_()
        model.pos_layer.weight[0, 0] = model.pos_layer.weight[1, 1] = 1.0
        fmap = next(model.iter_features(torch.zeros(1, 3, 96, 64)))
    rows, cols = torch.meshgrid(torch.arange(5.0), torch.arange(4.0), indexing="ij")
    torch.testing.assert_close(fmap[0, 0], (rows + 0.5) / 5)  # cells of 24/5 map pixels, over 24
    torch.testing.assert_close(fmap[0, 1], (cols + 0.5) / 4)


def test_capture_attention_gives_the_sampling_positions_in_the_image():
    model = vitlab.create_model("ps_vit_ti_14", embed_dim=16, depth=4, num_iters=3, num_heads=2, stem_width=8,
                                stem_channels=16).eval()  # fmt: skip
    shift = torch.tensor([1.25, -0.5])  # (y, x) map pixels, predicted by the first iteration for every point
    with torch.no_grad():
        model.ps_layers[0].offset_layer.bias.copy_(shift)
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad(), vitlab.capture_attention(model, positions=True) as maps:
        model(x)
    grid = initial_points(*model.points_for((80, 112)), 20, 28)[0]  # (y, x) on the 20x28 stem map
    first, second = (maps[f"ps_layers.{i}.sampler:positions"][0] for i in (0, 1))
    assert first.shape == (2, grid.shape[0], 2)
    torch.testing.assert_close(first, grid.flip(-1).expand(2, -1, -1))  # recorded as (x, y)
    torch.testing.assert_close(second, (grid + shift).flip(-1).expand(2, -1, -1))
    for positions in (first, second):  # image pixel (p + 0.5) * 4 - 0.5 of the 80x112 input
        image = (positions + 0.5) * 4 - 0.5
        assert (image >= -0.5).all() and (image[..., 0] <= 111.5).all() and (image[..., 1] <= 79.5).all()
    with torch.no_grad(), vitlab.capture_attention(model) as maps:
        model(x)
    assert not any(name.endswith(":positions") for name in maps)  # only when asked


def test_recorded_positions_are_where_the_tokens_were_sampled():
    torch.manual_seed(1)
    fmap = torch.randn(1, 4, 6, 9, dtype=torch.float64)
    points = torch.rand(1, 30, 2, dtype=torch.float64) * torch.tensor([8.0, 11.0]) - 1.0
    offsets = torch.randn_like(points)
    sampler = vitlab.create_model("ps_vit_ti_14").ps_layers[0].sampler
    store = []
    sampler.position_store = store
    tokens = sampler(fmap, points, offsets)
    (positions,) = store
    for n in range(30):
        x, y = positions[0, n].tolist()
        torch.testing.assert_close(tokens[0, n], naive_bilinear(fmap[0], y, x), rtol=0, atol=1e-14)


@pytest.mark.parametrize(("source", "target", "named"), [
    ("ps_vit_b_14", "ps_vit_b_18", "point_coord (checkpoint (1, 196, 2), model (1, 324, 2))"),
    ("ps_vit_ti_14", "ps_vit_b_14", "stem.4.conv3.weight"),
])  # fmt: skip
def test_a_checkpoint_of_another_variant_is_refused_with_the_keys_named(source, target, named):
    with torch.device("meta"):
        state, model = vitlab.create_model(source).state_dict(), vitlab.create_model(target)
    with pytest.raises(CheckpointError, match="mis-shaped keys") as error:
        load_state_dict(model, state, source=f"{source}.pth")
    assert named in str(error.value)


def test_in_a_graph_the_points_follow_the_traced_size():
    """The graph's count of points (integer arithmetic, half to even as Python's round) and grid (tensor
    operations) against the eager ones, for ints and the ONNX tracer's 0-dim tensors; ties such as
    14 * 40 / 224 = 2.5 (-> 2) and 14 * 56 / 224 = 3.5 (-> 4) included."""
    for num, own in [(14, 224), (10, 224), (18, 224), (4, 64)]:
        for side in range(1, 300):
            expected = max(1, round(num * side / own))
            assert rounded_points(num, side, own) == expected == int(rounded_points(num, torch.tensor(side), own))
    cpu = torch.device("cpu")
    for size in [(14, 14, 56, 56), (3, 7, 13, 29), (7, 9, 25, 33), (13, 11, 51, 47), (1, 2, 3, 9)]:
        for dtype in (torch.float32, torch.float64):
            expected = initial_points(*size, dtype=dtype)
            assert torch.equal(grid_points(*size, cpu, dtype), expected)
            assert torch.equal(grid_points(*map(torch.tensor, size), cpu, dtype), expected)


def test_the_graph_branch_gives_the_eager_outputs(monkeypatch):
    model = vitlab.create_model("ps_vit_b_10", embed_dim=16, depth=3, num_iters=2, num_heads=2, stem_width=8,
                                stem_channels=16, num_classes=3).eval().double()  # fmt: skip
    with torch.no_grad():
        for layer in model.ps_layers[:-1]:  # offsets that move the points
            layer.offset_layer.weight.normal_(0, 0.5)
    for size in [(64, 64), (97, 49), (56, 24)]:  # 4x4, 4x2 and 2x1 points (2.5 -> 2)
        assert graph_branch_error(model, torch.randn(2, 3, *size, dtype=torch.float64), monkeypatch) == 0, size
