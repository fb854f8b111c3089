"""Attention maps of every family, in the geometry each really has (tiny configurations)."""

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.analysis import NoAttentionError, query_weights, record_layers
from vitlab.analysis.draw import draw_layer
from vitlab.registry import get_entry

# One variant per family; the kinds of attention call its maps must show.
FAMILIES = {
    "vit_tiny_patch16_224": {"global"},
    "deit_tiny_distilled_patch16_224": {"global"},
    "swin_tiny_patch4_window7_224": {"windows"},
    "cswin_tiny_224": {"stripes"},
    "axial26s": {"axial-columns", "axial-rows"},
    "pale_tiny_224": {"interlacedgroups"},
    "sasa_resnet26": {"neighbourhood"},
    "pvt_tiny": {"spatial-reduction", "global"},
    "pvt_v2_b2_li": {"spatial-reduction"},
    "dat_tiny": {"windows", "deformable"},
    "ps_vit_b_14": {"global"},
    "t2t_vit_7": {"global"},
    "convit_tiny": {"gated-positional", "global"},
    "ceit_tiny_patch16_224": {"global", "layer-class-tokens"},
    "vt_resnet18": {"tokenizer", "visual-tokens", "projector"},
}
SIZE = (64, 80)  # not square, and not a multiple of Swin's or DAT's windows at every stage


def tiny(name):
    torch.manual_seed(0)
    return vitlab.create_model(name, num_classes=5, **get_entry(name).tiny).eval()


def images(model, batch=2):
    torch.manual_seed(1)
    return torch.randn(batch, model.in_chans, *SIZE)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def recorded(request):
    model = tiny(request.param)
    return request.param, model, record_layers(model, images(model))


def test_every_family_reports_its_geometry(recorded):
    name, _, layers = recorded
    assert {layer.kind for layer in layers} == FAMILIES[name]


def test_maps_have_the_layer_shape_and_rows_sum_to_one(recorded):
    _, _, layers = recorded
    for layer in layers:
        batch, heads, queries, keys = layer.probs.shape
        assert (batch, queries, keys) == (2, layer.queries.count, layer.keys.count), layer.name
        for tokens in (layer.queries, layer.keys):
            if tokens.grid is not None:
                assert tokens.prefix + tokens.grid[0] * tokens.grid[1] == tokens.count, layer.name
            if tokens.points is not None:
                assert tokens.prefix + tokens.points.shape[-2] == tokens.count, layer.name
        torch.testing.assert_close(layer.probs.sum(-1), torch.ones(batch, heads, queries), atol=1e-5, rtol=0)
        assert (layer.probs >= 0).all()


def test_drawn_picture_exists_and_is_not_blank(recorded, tmp_path):
    name, _, layers = recorded
    layer = next(layer for layer in reversed(layers) if layer.keys.spatial)
    picture = np.random.default_rng(0).random(SIZE)
    path = draw_layer(layer, tmp_path / f"{name}.png", picture, query=(20.0, 30.0) if layer.queries.spatial else None)
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def support(layer, row):
    """The grid cells (r, c) a query row attends to, in any head or image (Swin's -100 mask leaves ~1e-44)."""
    weights = layer.probs[:, :, row, layer.keys.prefix :].abs().amax(dim=(0, 1))
    w = layer.keys.grid[1]
    return {(int(i) // w, int(i) % w) for i in (weights > 1e-20).nonzero().flatten()}


def layer_named(layers, name):
    return next(layer for layer in layers if layer.name == name)


def test_swin_window_query_sees_exactly_its_window():
    model = tiny("swin_tiny_patch4_window7_224")
    layer = layer_named(record_layers(model, images(model)), "layers.0.blocks.0.attn")
    H, W = layer.queries.grid  # padded to whole 7 x 7 windows: 16 x 20 -> 21 x 21
    assert (H, W) == (21, 21)
    for r, c in [(0, 0), (8, 10), (15, 19)]:
        window = {(i, j) for i in range(r // 7 * 7, r // 7 * 7 + 7) for j in range(c // 7 * 7, c // 7 * 7 + 7)}
        assert support(layer, r * W + c) == window


def test_shifted_window_query_sees_its_shifted_window_only():
    model = tiny("swin_tiny_patch4_window7_224")
    layer = layer_named(record_layers(model, images(model)), "layers.0.blocks.1.attn")
    H, W = layer.queries.grid
    # Shift 3: the map is rolled up-left by 3, so windows start at rows/cols 3, 10, 17 of the original map;
    # the last one wraps round to rows/cols 0-2, which the shift mask keeps apart from 17-20.
    r, c = 5, 12
    assert support(layer, r * W + c) == {(i, j) for i in range(3, 10) for j in range(10, 17)}
    corner = support(layer, 0)  # rolled into the last window with rows/cols 17-20, masked from them
    assert corner == {(i, j) for i in range(3) for j in range(3)}


def test_neighbourhood_is_the_k_by_k_square_inside_the_map():
    model = tiny("sasa_resnet26")
    layer = record_layers(model, images(model))[0]
    H, W = layer.queries.grid
    k = model.get_submodule(layer.name).kernel_size // 2
    for r, c in [(0, 0), (H // 2, W // 2)]:
        square = {(i, j) for i in range(r - k, r + k + 1) for j in range(c - k, c + k + 1) if 0 <= i < H and 0 <= j < W}
        assert support(layer, r * W + c) == square


def test_axial_attention_stays_on_its_column_or_row():
    model = tiny("axial26s")
    layers = record_layers(model, images(model))
    for layer in layers[:2]:
        H, W = layer.queries.grid
        r, c = H // 2, W // 3
        line = {(i, c) for i in range(H)} if layer.kind == "axial-columns" else {(r, j) for j in range(W)}
        assert support(layer, r * W + c) == line


def test_stripes_cover_a_band_of_rows_or_columns():
    model = tiny("cswin_tiny_224")
    layer = record_layers(model, images(model))[0]
    module = model.get_submodule(layer.name)
    H, W = layer.queries.grid
    width, axis = module.grouping.width, module.grouping.axis
    r, c = H // 2, W // 2
    if axis == "rows":
        band = {(i, j) for i in range(r // width * width, r // width * width + width) for j in range(W)}
    else:
        band = {(i, j) for i in range(H) for j in range(c // width * width, c // width * width + width)}
    assert support(layer, r * W + c) == band


def test_pale_rows_interlace_every_nth_row():
    model = tiny("pale_tiny_224")
    layer = next(layer for layer in record_layers(model, images(model)) if layer.name.endswith("rows"))
    H, W = layer.queries.grid
    groups = model.get_submodule(layer.name).grouping.plan((H, W), "cpu").groups
    r = H // 2
    assert support(layer, r * W) == {(i, j) for i in range(H) if i % groups == r % groups for j in range(W)}


def test_query_pixel_picks_its_cell_and_sampled_keys_are_image_points():
    model = tiny("dat_tiny")
    layers = record_layers(model, images(model))
    deformable = next(layer for layer in layers if layer.kind == "deformable")
    points = deformable.keys.points
    assert points.shape[:2] == (2, deformable.probs.shape[1]) and points.shape[-1] == 2
    assert (points[..., 0] > -SIZE[1]).all() and (points[..., 0] < 2 * SIZE[1]).all()
    vit = tiny("vit_tiny_patch16_224")
    layer = record_layers(vit, images(vit))[-1]
    # (x=70, y=20) lies in patch row 1, column 4 of the 4 x 5 grid: token 1 + 1 * 5 + 4.
    torch.testing.assert_close(query_weights(layer, (70.0, 20.0)), layer.probs[:, :, 10])
    torch.testing.assert_close(query_weights(layer, "cls"), layer.probs[:, :, 0])


def test_sampled_tokens_take_their_sampler_positions():
    model = tiny("ps_vit_b_14")
    layer = record_layers(model, images(model))[-1]
    assert layer.queries.prefix == 1 and layer.queries.points.shape[-2] == layer.queries.count - 1


def test_models_without_attention_say_so():
    model = tiny("hornet_tiny_7x7")
    with pytest.raises(NoAttentionError, match="no attention layers"):
        record_layers(model, images(model))
