import pytest
import torch

import vitlab
from tests.helpers import graph_branch_error
from vitlab.checkpoint import load_state_dict
from vitlab.models.axial import AxialAttention, centred_relative_embeddings

# Parameter counts and MACs of the authors' release at 224x224 (references/backbones.md section 14).
PARAMS = {"axial26s": 5.94, "axial50s": 11.59, "axial50m": 25.18, "axial50l": 43.97}
GMACS = {"axial26s": 1.81, "axial50s": 2.84}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_release(name):
    assert round(vitlab.model_info(name)["params"] / 1e6, 2) == PARAMS[name]


@pytest.mark.parametrize("name", GMACS)
def test_macs_match_the_references(name):
    assert round(vitlab.model_info(name)["gmacs"], 2) == GMACS[name]


def small(img_size=64, **kwargs):
    config = dict(layers=(1, 2, 1, 1), s=0.125, groups=2, num_classes=5, img_size=img_size)
    config.update(kwargs)
    return vitlab.create_model("axial26s", **config).eval()


def randomize(model):
    """Random relative tables and BN statistics, so that position and normalisation matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("relative", ".bias")) or "bn" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("bn2.weight") else 0.0))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_release_layout_and_spans():
    with torch.device("meta"):
        model = vitlab.create_model("axial26s")
    state = model.state_dict()
    for key in [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv_down.weight",
        "layer1.0.hight_block.qkv_transform.weight",
        "layer1.0.hight_block.bn_similarity.weight",
        "layer1.0.width_block.bn_output.running_var",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.0.conv_up.weight",
        "fc.bias",
    ]:
        assert key in state, key
    assert state["layer1.0.hight_block.flatten_index"].shape == (56 * 56,)  # saved, as in the release
    # The first block of stages 2-4 attends at the stage's input size, the rest at the pooled size.
    spans = {name: m.span for name, m in model.named_modules() if name.endswith("hight_block")}
    assert spans == {
        "layer1.0.hight_block": 56,
        "layer2.0.hight_block": 56,
        "layer2.1.hight_block": 28,
        "layer3.0.hight_block": 28,
        "layer3.1.hight_block": 14,
        "layer3.2.hight_block": 14,
        "layer3.3.hight_block": 14,
        "layer4.0.hight_block": 14,
    }
    group_planes = 64 // 8  # layer1 width 64 (s = 0.5), 8 heads
    assert state["layer1.0.hight_block.relative"].shape == (2 * group_planes, 2 * 56 - 1)
    assert model.layer2[0].width_block.pooling is not None and model.layer2[0].hight_block.pooling is None


def test_last_bn_of_every_block_starts_at_zero():
    model = vitlab.create_model("axial26s", s=0.125, groups=2)
    assert all((block.bn2.weight == 0).all() for stage in (model.layer1, model.layer4) for block in stage)


@pytest.mark.parametrize("size", [(64, 64), (50, 37), (17, 33), (96, 80)])
def test_any_input_size_and_features(size):
    model = randomize(small())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        extractor = vitlab.create_model("axial26s", features_only=True, layers=(1, 1, 1, 1), s=0.125, groups=2)
        maps = extractor.eval()(x)
    h, w = -(-size[0] // 4), -(-size[1] // 4)  # odd sides round up at every stride, like the shortcut
    for i, (feature, channels) in enumerate(zip(maps, (32, 64, 128, 256), strict=True)):
        assert feature.shape == (2, channels, h, w), i
        h, w = -(-h // 2), -(-w // 2)


def test_shorter_axes_use_the_middle_of_the_table():
    """A model built for 64 on a 32 input = a model built for 32 holding the middle of its tables."""
    big = randomize(small(img_size=64))
    little = small(img_size=32)
    load_state_dict(little, big.state_dict())
    assert little.layer1[0].hight_block.relative.shape[1] == 2 * 8 - 1
    torch.testing.assert_close(
        little.layer1[0].hight_block.relative, big.layer1[0].hight_block.relative[:, 16 - 8 : 16 + 7]
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(little(x), big(x))


def test_longer_axes_interpolate_the_table_and_checkpoints_adapt_the_same_way():
    little = randomize(small(img_size=32))
    big = small(img_size=64)
    load_state_dict(big, little.state_dict())  # adapt_state_dict interpolates the tables
    assert big.layer1[0].hight_block.relative.shape[1] == 2 * 16 - 1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(little(x), big(x))  # `little` interpolates on the fly


def test_capture_attention_reports_every_axis():
    model = randomize(small())
    x = torch.randn(2, 3, 48, 40)  # stage 1 maps of 12 x 10
    with torch.no_grad():
        expected = model(x)
        with vitlab.capture_attention(model) as maps:
            actual = model(x)
    torch.testing.assert_close(actual, expected)
    assert len(maps) == 2 * 5  # a height and a width layer in each of the 5 blocks
    height, width = maps["layer1.0.hight_block"][0], maps["layer1.0.width_block"][0]
    assert height.shape == (2 * 10, 2, 12, 12)  # (batch * columns, heads, queries, keys)
    assert width.shape == (2 * 12, 2, 10, 10)
    torch.testing.assert_close(height.sum(-1), torch.ones(20, 2, 12))


def test_axial_attention_is_position_sensitive():
    layer = AxialAttention(8, 8, groups=2, span=6).eval()
    with torch.no_grad():
        layer.relative.normal_()
    x = torch.randn(1, 8, 6, 1)
    flipped = x.flip(2)
    with torch.no_grad():  # without position terms, reversing a column would just reverse the output
        assert not torch.allclose(layer(flipped).flip(2), layer(x), atol=1e-4)
        layer.relative.zero_()
        torch.testing.assert_close(layer(flipped).flip(2), layer(x))


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="4 stages"):
        small(layers=(1, 1, 1))
    with pytest.raises(ValueError, match="divisible by groups 3"):
        small(groups=3)


def naive_resampled_offsets(table: torch.Tensor, length: int) -> torch.Tensor:
    """Entry [:, i, j] by hand: offset i - j of 2 length - 1 offsets sits at (i - j + length - 1) (2 span - 2)
    / (2 length - 2) in the table of 2 span - 1 offsets (end points aligned), read linearly."""
    span = (table.shape[1] + 1) // 2
    out = torch.empty(table.shape[0], length, length, dtype=table.dtype)
    for i in range(length):
        for j in range(length):
            position = (i - j + length - 1) * (2 * span - 2) / (2 * length - 2)
            low = min(int(position), 2 * span - 3)
            weight = position - low
            out[:, i, j] = table[:, low] * (1 - weight) + table[:, low + 1] * weight
    return out


def test_in_a_graph_one_resampling_serves_axes_shorter_and_longer_than_the_span():
    """The graph's table (resampled to max(2 L - 1, 2 span - 1) offsets, centred rows gathered) is eager's crop
    of the middle for L <= span (resampling to its own size is the identity) and eager's interpolation beyond."""
    layer = AxialAttention(8, 8, groups=2, span=7)
    for length in range(1, 17):
        eager = layer.relative_embeddings(length)
        assert torch.equal(centred_relative_embeddings(layer.relative, 7, length), eager), length
    table = layer.relative.detach().double()  # float64 is resampled in float64, eagerly and in the graph
    for length in (8, 11, 16):
        graph = centred_relative_embeddings(table, 7, length)
        torch.testing.assert_close(graph, naive_resampled_offsets(table, length), rtol=1e-13, atol=1e-14)
        layer.relative.data = table
        torch.testing.assert_close(layer.relative_embeddings(length), graph, rtol=1e-13, atol=1e-14)
    traced = centred_relative_embeddings(table, 7, torch.tensor(11))  # the ONNX tracer's 0-dim sizes
    assert torch.equal(traced, centred_relative_embeddings(table, 7, 11))


def test_the_graph_branch_gives_the_eager_outputs(monkeypatch):
    """The whole model with the graph's branch (a trace said to be running) against the eager path, float64.
    Spans 16, 16, 8, 4: 48x48 is shorter everywhere, 64x64 equal, 97x49 and 130x72 longer on some axes."""
    model = randomize(small()).double()
    for size in [(48, 48), (64, 64), (97, 49), (130, 72)]:
        assert graph_branch_error(model, torch.randn(1, 3, *size, dtype=torch.float64), monkeypatch) < 1e-12, size
