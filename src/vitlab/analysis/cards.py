"""Model cards: `vitlab models --details NAME`.

What a variant is and how far to trust it: its family and paper, the reference implementation and
the commit or version the parity fixtures were generated from, the fixtures themselves (with
`--check-parity`, re-run here and their max relative errors printed), parameters and GMACs at its
input size counted the papers' way (`model_info`), the paper's reported accuracy, the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import vitlab
from vitlab.analysis.complexity import model_info
from vitlab.registry import get_entry, list_models


def fixture_folder() -> Path | None:
    """tests/parity/fixtures of the source checkout vitlab runs from, or of the working directory."""
    for root in (Path(vitlab.__file__).resolve().parents[2], Path.cwd()):
        folder = root / "tests" / "parity" / "fixtures"
        if folder.is_dir():
            return folder
    return None


def family_fixtures(name: str) -> list[tuple[Path, dict]]:
    """The parity fixtures of `name`'s family (the same model class), with their metadata."""
    from safetensors import safe_open

    folder = fixture_folder()
    if folder is None:
        return []
    builder = get_entry(name).builder
    known = set(list_models())
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if meta.get("model") in known and get_entry(meta["model"]).builder is builder:
            found.append((path, meta))
    return found


def check_fixture(path: Path, meta: dict) -> float:
    """Run one fixture as tests/parity does (converter, strict load, float64): its max relative error."""
    from safetensors import safe_open

    from vitlab.checkpoint import load_state_dict

    if "hf_config" in meta:
        raise ValueError("an HF fixture with its config.json: run tests/parity for it")
    with safe_open(path, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    model = vitlab.create_model(meta["model"], **json.loads(meta["kwargs"]))
    load_state_dict(model, state, source=path.name)
    model.double().train(json.loads(meta.get("train_mode", "false")))
    with torch.no_grad():
        actual = model(tensors["input"].double())
    expected = tensors["output"]
    return float((actual - expected).abs().max() / expected.abs().max())


def model_card(name: str, check_parity: bool = False) -> str:
    """The card of a registered variant, as text."""
    entry = get_entry(name)
    info = model_info(name)
    pre = entry.preprocess
    lines = [
        name,
        f"  family      {entry.builder.__module__} ({entry.builder.__name__}), task {entry.task}",
        f"  reference   {entry.reference}",
        f"  paper       {', '.join(f'{k} {v}' for k, v in entry.paper.items()) or 'no figure registered'}",
        f"  input       {'x'.join(map(str, info['input_size']))}, crop_pct {pre.crop_pct}, "
        f"mean {tuple(pre.mean)}, std {tuple(pre.std)}",
        f"  params      {info['params'] / 1e6:.2f}M",
        f"  GMACs       {info['gmacs']:.2f} at {'x'.join(map(str, info['input_size'][1:]))} "
        "(multiply-accumulates, attention products included, as the papers count)",
        f"  weights     {entry.url or 'none published in the registry'}",
    ]
    fixtures = family_fixtures(name)
    if not fixtures:
        lines.append("  parity      no fixture of this family found (tests/parity/fixtures is not beside this install)")
    else:
        lines.append(
            f"  parity      {len(fixtures)} fixture(s) of this family, float64, max rel. error < 1e-8 required:"
        )
    for path, meta in fixtures:
        line = f"    {path.stem}: layout {meta.get('layout')}, reference {meta.get('reference')}"
        if check_parity:
            try:
                line += f", measured max rel. error {check_fixture(path, meta):.2e}"
            except ValueError as err:
                line += f" ({err})"
        lines.append(line)
    return "\n".join(lines)
