"""HorNet's gnConv gating products: eq. 3.3-3.4 by hand with NCHW convolutions, their maps, the picture."""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import vitlab
from vitlab.analysis.gates import draw_gates, record_gates
from vitlab.cli import main
from vitlab.registry import get_entry


def tiny(name):
    torch.manual_seed(0)
    model = vitlab.create_model(name, **get_entry(name).tiny).eval().double()
    with torch.no_grad():  # layer scale starts at 1e-6: give the blocks a visible say
        for name, p in model.named_parameters():
            if name.endswith(("gamma1", "gamma2")):
                p.fill_(0.5)
    return model


def products_by_hand(gnconv, x):
    """p_0 and q from the 1x1 projection, f = depthwise 7x7 (scaled), p_{k+1} = g_k(p_k) * f_k (NCHW convolutions)."""
    y = F.conv2d(x.permute(0, 3, 1, 2), gnconv.proj_in.weight, gnconv.proj_in.bias)
    p, q = y.split([gnconv.dims[0], sum(gnconv.dims)], dim=1)
    f = F.conv2d(q, gnconv.dwconv.weight, gnconv.dwconv.bias, padding=3, groups=q.shape[1]) * gnconv.scale
    gates = f.split(gnconv.dims, dim=1)
    products = [p * gates[0]]
    for g, gate in zip(gnconv.pws, gates[1:], strict=True):
        products.append(F.conv2d(products[-1], g.weight, g.bias) * gate)
    return [t.permute(0, 2, 3, 1) for t in products]


def test_products_are_the_recursion_of_eq_3_3():
    model = tiny("hornet_tiny_7x7")
    seen = {}

    def keep(name):
        def hook(module, args, out):
            seen.setdefault(name, (args[0], out))

        return hook

    for name, m in model.named_modules():
        if type(m).__name__ == "GnConv":
            m.register_forward_hook(keep(name))
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    calls = record_gates(model, x)
    assert [c.name for c in calls] == [f"stages.{i}.0.gnconv" for i in range(4)]
    assert [c.order for c in calls] == [2, 3, 4, 5]
    for call in calls:
        gnconv = model.get_submodule(call.name)
        inputs, output = seen[call.name]
        expected = products_by_hand(gnconv, inputs)
        assert len(call.products) == len(expected)
        for got, want in zip(call.products, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        last = call.products[-1]  # the output is proj_out(p_n)
        torch.testing.assert_close(F.linear(last, gnconv.proj_out.weight.flatten(1), gnconv.proj_out.bias), output)
        magnitudes = call.magnitudes()
        assert magnitudes.shape == (2, call.order, *inputs.shape[1:3])
        torch.testing.assert_close(magnitudes[1, -1, 1, 2], expected[-1][1, 1, 2].square().mean().sqrt())
    assert calls[0].products[0].shape == (2, 16, 24, 4) and calls[0].products[1].shape == (2, 16, 24, 8)  # C/2, C
    assert all(m.gate_store is None for m in model.modules() if type(m).__name__ == "GnConv")


def test_global_filter_variant_records_its_products_too():
    model = tiny("hornet_tiny_gf")
    calls = record_gates(model, torch.randn(1, 3, 64, 64, dtype=torch.float64))
    gnconv = model.get_submodule(calls[-1].name)
    assert type(gnconv.dwconv).__name__ == "GlobalLocalFilter" and calls[-1].order == 5
    assert all(p.shape[1:3] == (2, 2) for p in calls[-1].products)


def test_picture_and_command(tmp_path, capsys):
    model = tiny("hornet_tiny_7x7")
    call = record_gates(model, torch.randn(1, 3, 64, 64, dtype=torch.float64))[1]
    path = draw_gates(call, tmp_path / "gates.png")
    assert np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).std() > 10
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    args = ["--threads", "1", "attention", "--model", "hornet_tiny_7x7", "--tiny", str(picture), "--img-size", "64"]
    assert main([*args, "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "stages.0.0.gnconv  gnconv order 2  map (16, 16)" in lines[0]
    out = tmp_path / "last.png"
    assert main([*args, "--output", str(out)]) == 0
    assert "stages.3.0.gnconv (no attention: gnConv gating products of orders 1-5)" in capsys.readouterr().out
    assert out.stat().st_size > 5000
    assert main([*args, "--layer", "4"]) == 2
    assert "out of range: the model made 4 gnConv calls" in capsys.readouterr().err
