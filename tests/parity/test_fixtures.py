"""Parity against the reference implementations, one fixture per (model, reference layout).

Each fixture in tests/parity/fixtures holds weights exactly as a reference implementation names
them, an input, and the output the reference computed (see tools/fixtures/). Here the weights go
through vitlab's converter for that layout into the vitlab model, which must reproduce the output
within a max relative error of 1e-4 (max |ours - reference| / max |reference|) in float32.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import vitlab
from tests.helpers import max_rel_error
from vitlab.checkpoint import load_state_dict

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.safetensors"))


def read_fixture(path: Path):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return meta, state, tensors["input"], tensors["output"]


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_matches_reference(path: Path):
    meta, state, inputs, expected = read_fixture(path)
    model = vitlab.create_model(meta["model"], **json.loads(meta["kwargs"]))
    layout = load_state_dict(model, state, source=path.name)
    assert layout == meta["layout"]
    model.train(json.loads(meta.get("train_mode", "false")))
    with torch.no_grad():
        actual = model(inputs)
    assert actual.shape == expected.shape
    assert max_rel_error(actual, expected) < 1e-4, f"{path.name}: reference {meta['reference']}"


def test_fixtures_cover_every_layout():
    layouts = {(read_fixture(p)[0]["model"].split("_")[0], read_fixture(p)[0]["layout"]) for p in FIXTURES}
    assert {("vit", "native"), ("vit", "hf"), ("vit", "jax"), ("deit", "native"), ("deit", "hf")} <= layouts
