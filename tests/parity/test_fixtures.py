"""Parity against the reference implementations, one fixture per (model, reference layout).

Each fixture in tests/parity/fixtures holds weights exactly as a reference implementation names
them, an input, and the output the reference computed in float64 (see tools/fixtures/; weights and
input hold float32 values, stored exactly as float32).
Here the weights go through vitlab's converter for that layout into the vitlab model, which is then
converted to float64 and must reproduce the output within a max relative error of 1e-8
(max |ours - reference| / max |reference|): a wrong eps or a transposed weight cannot hide in
float32 rounding.

A fixture whose metadata has "hf_config" is an HF checkpoint with HF's own configuration: its
state is written as model.safetensors beside that config.json and loaded through
`vitlab.create_model(..., pretrained=path)`, whose constructor arguments leave out what only
config.json says (layer_norm_eps): vitlab must read it there.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict
from vitlab.layouts import convert_state_dict

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.safetensors"))
TOLERANCE = 1e-8


def read_fixture(path: Path):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return meta, state, tensors["input"], tensors["output"]


def layer_norm_eps(model: torch.nn.Module) -> list[float]:
    return sorted({m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)})


def load_hf_checkpoint(meta: dict, state: dict, directory: Path) -> torch.nn.Module:
    """The fixture as an HF checkpoint directory (model.safetensors, config.json), loaded by create_model."""
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(meta["hf_config"])
    return vitlab.create_model(meta["model"], pretrained=directory / "model.safetensors", **json.loads(meta["kwargs"]))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_matches_reference(path: Path, tmp_path: Path):
    meta, state, inputs, expected = read_fixture(path)
    assert meta.get("dtype") == "float64" and expected.dtype == torch.float64, (
        f"{path.name} is not a float64 fixture: regenerate it with tools/fixtures/"
    )
    inputs = inputs.double()  # float32 values, stored exactly
    if "hf_config" in meta:
        model = load_hf_checkpoint(meta, state, tmp_path)
        layout = convert_state_dict(model, dict(state))[1]
    else:
        model = vitlab.create_model(meta["model"], **json.loads(meta["kwargs"]))
        layout = load_state_dict(model, state, source=path.name)
    assert layout == meta["layout"]
    model.double()
    model.train(json.loads(meta.get("train_mode", "false")))
    with torch.no_grad():
        actual = model(inputs)
    assert actual.shape == expected.shape
    error = max_rel_error(actual, expected)
    message = f"{path.name}: max relative error {error:.3g} in float64 (reference {meta['reference']})"
    if "hf_config" in meta:  # the eps came from config.json, not from the arguments
        config_eps = json.loads(meta["hf_config"]).get("layer_norm_eps")
        message += f"; config.json: layer_norm_eps={config_eps}, the model's LayerNorm eps {layer_norm_eps(model)}"
    assert error < TOLERANCE, message


def test_fixtures_cover_every_layout():
    layouts = {(read_fixture(p)[0]["model"].split("_")[0], read_fixture(p)[0]["layout"]) for p in FIXTURES}
    assert {("vit", "native"), ("vit", "hf"), ("vit", "jax"), ("deit", "native"), ("deit", "hf")} <= layouts
