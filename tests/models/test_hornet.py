"""HorNet: counts, the gnConv recursion and the global filter read from the paper, sizes, loading, the small model.

Parity with the official code (7x7 and GF, orders 2-5, the GF weight resized for another input)
is in tests/parity/fixtures/hornet_*.safetensors (tools/fixtures/hornet.py).
"""

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.analysis.complexity import count_params
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.models.hornet import GlobalLocalFilter, GnConv

# Parameter counts of the official code (references/backbones.md, issue 14), in millions to 2 decimals.
PARAMS = {
    "hornet_tiny_7x7": 22.41,
    "hornet_tiny_gf": 22.99,
    "hornet_small_7x7": 49.53,
    "hornet_small_gf": 50.40,
    "hornet_base_7x7": 87.26,
    "hornet_base_gf": 88.42,
    "hornet_large_7x7": 194.54,
    "hornet_large_gf": 196.29,
}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_official_code(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(count_params(model) / 1e6, 2) == PARAMS[name]


def test_macs_match_the_official_code_and_the_paper():
    assert round(vitlab.model_info("hornet_tiny_7x7")["gmacs"], 2) == 3.97  # official code, measured: 3.968
    assert round(vitlab.model_info("hornet_tiny_gf")["gmacs"], 1) == 3.9  # the paper's 3.9G (FFTs counted)


def test_state_dict_has_the_official_layout():
    with torch.device("meta"):
        seven = vitlab.create_model("hornet_tiny_7x7").state_dict()
        gf = vitlab.create_model("hornet_tiny_gf").state_dict()
    assert (len(seven), len(gf)) == (560, 640)  # as the official hornet_tiny_7x7 / hornet_tiny_gf
    assert seven["stages.3.0.gnconv.dwconv.weight"].shape == (992, 1, 7, 7)  # order 5: 32 + 64 + ... + 512
    assert gf["stages.2.0.gnconv.dwconv.complex_weight"].shape == (240, 14, 8, 2)
    assert gf["stages.3.0.gnconv.dwconv.complex_weight"].shape == (496, 7, 4, 2)
    for key in [
        "downsample_layers.0.0.weight", "downsample_layers.0.1.weight", "downsample_layers.3.1.weight",
        "stages.0.1.gamma1", "stages.0.1.gnconv.proj_in.weight", "stages.3.1.gnconv.pws.3.bias",
        "stages.1.2.pwconv2.weight", "stages.2.17.gnconv.dwconv.weight", "norm.bias", "head.weight",
    ]:  # fmt: skip
        assert key in seven
    assert "stages.1.0.gnconv.dwconv.weight" in gf and "stages.2.0.gnconv.dwconv.dw.weight" in gf
    with torch.device("meta"):
        assert vitlab.create_model("hornet_base_gf", img_size=384).state_dict()[
            "stages.2.0.gnconv.dwconv.complex_weight"
        ].shape[1:3] == (24, 13)  # the official hornet_base_gf_img384's filter


def naive_gnconv(m: GnConv, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3.3-3.4 on an NCHW map: [p0, q0..q_{n-1}] = phi_in(x); p_{k+1} = g_k(p_k) * (s f(q))_k; phi_out(p_n)."""
    y = F.conv2d(x, m.proj_in.weight, m.proj_in.bias)
    p, q = y[:, : m.dims[0]], y[:, m.dims[0] :]
    f = F.conv2d(q, m.dwconv.weight, m.dwconv.bias, padding=3, groups=q.shape[1]) * (1 / 3)
    start = 0
    for k, width in enumerate(m.dims):
        if k:
            p = F.conv2d(p, m.pws[k - 1].weight, m.pws[k - 1].bias)
        p = p * f[:, start : start + width]
        start += width
    return F.conv2d(p, m.proj_out.weight, m.proj_out.bias)


@pytest.mark.parametrize("order", [2, 3, 5])
def test_gnconv_is_the_recursion_of_the_paper(order):
    torch.manual_seed(0)
    m = GnConv(16, order).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    assert m.dims == [16 // 2 ** (order - 1 - k) for k in range(order)]
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        actual = m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(actual, naive_gnconv(m, x))


def test_global_filter_is_a_circular_convolution():
    """With W = rfft2(k), irfft2(rfft2(x, ortho) * W, ortho) is x convolved circularly with k (GFNet)."""
    torch.manual_seed(0)
    channels, height, width = 3, 5, 6
    layer = GlobalLocalFilter(2 * channels, (height, width // 2 + 1)).double()
    kernel = torch.randn(channels, height, width, dtype=torch.float64)
    with torch.no_grad():
        layer.complex_weight.copy_(torch.view_as_real(torch.fft.rfft2(kernel)))
    x = torch.randn(2, height, width, channels, dtype=torch.float64)
    expected = torch.zeros_like(x)
    for i in range(height):
        for j in range(width):
            expected += kernel[:, i, j] * x.roll((i, j), dims=(1, 2))
    with torch.no_grad():
        torch.testing.assert_close(layer.global_filter(x), expected)


def small(name: str = "hornet_tiny_gf", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return vitlab.create_model(name, **{"base_dim": 8, "depths": (1, 1, 1, 1), "num_classes": 5, **kwargs}).eval()


def test_a_gf_checkpoint_for_another_size_is_resized_as_the_forward_pass_resizes():
    made_for_64 = small(img_size=64)
    with torch.no_grad():
        for name, p in made_for_64.named_parameters():
            if name.endswith("complex_weight"):
                p.normal_()
    made_for_96 = small(img_size=96)
    assert made_for_96.stages[2][0].gnconv.dwconv.complex_weight.shape[1:3] == (6, 4)
    load_state_dict(made_for_96, made_for_64.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(made_for_96(x), made_for_64(x))  # resized at load vs. on the fly


def test_another_variant_is_refused_with_the_keys_named():
    with pytest.raises(CheckpointError, match=r"missing keys.*stages\.2\.0\.gnconv\.dwconv\.weight(.|\n)*"
                       r"unexpected keys.*stages\.2\.0\.gnconv\.dwconv\.complex_weight"):  # fmt: skip
        load_state_dict(small("hornet_tiny_7x7"), small("hornet_tiny_gf").state_dict())
    with pytest.raises(CheckpointError, match=r"mis-shaped keys.*downsample_layers\.0\.0\.weight"):
        load_state_dict(small("hornet_small_gf", base_dim=16), small().state_dict())


def test_official_checkpoints_load_from_their_model_entry(tmp_path):
    source = small()
    torch.save({"model": source.state_dict(), "epoch": 299}, tmp_path / "checkpoint-best.pth")
    model = small()
    assert vitlab.load_checkpoint(model, tmp_path / "checkpoint-best.pth") == "native"
    torch.testing.assert_close(model.stages[3][0].gamma1, source.stages[3][0].gamma1)


def test_sides_below_the_stride_are_named():
    with pytest.raises(ValueError, match="at least 32x32 pixels, got 31x64"):
        small()(torch.randn(1, 3, 31, 64))
    mini = small("hornet_mini_28")
    assert mini(torch.randn(1, 1, 16, 16)).shape == (1, 5)
    with pytest.raises(ValueError, match="at least 16x16 pixels, got 15x28"):
        mini(torch.randn(1, 1, 15, 28))


def test_downsampling_layers_go_with_the_first_block_of_their_stage():
    groups = small(depths=(1, 2, 1, 1)).block_order()
    assert "downsample_layers.0.0.weight" in groups[0]
    assert {"downsample_layers.1.1.weight", "stages.1.0.gamma1"} <= set(groups[2])
    assert {"downsample_layers.3.0.bias", "stages.3.0.gamma1"} <= set(groups[5])


def test_gf_configuration_errors_are_named():
    with pytest.raises(ValueError, match="order 5 halves 24 channels 4 times"):
        GnConv(24, 5)
    with pytest.raises(ValueError, match="one entry per stage"):
        small(orders=(2, 3, 4))


def test_mini_28_has_its_size_and_trains():
    torch.manual_seed(0)
    model = vitlab.create_model("hornet_mini_28", in_chans=1, num_classes=10)
    assert 0.40e6 <= count_params(model) <= 0.50e6
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.1
