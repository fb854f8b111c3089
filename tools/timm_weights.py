"""Write src/vitlab/resources/timm_weights.json: the pretrained tags timm publishes for vitlab's variants.

Run with an environment that has timm installed (the reference environment) and vitlab on the path:

    PYTHONPATH=src python tools/timm_weights.py src/vitlab/resources/timm_weights.json

For every registered vitlab variant that timm also names, each of timm's pretrained tags is listed
in timm's own order of preference (the first is timm's default) with what timm's `pretrained_cfg`
states of it: the hub repository, the class count, the evaluation transform, the licence and the
original release it was converted from. No file is downloaded: timm's configurations give no file
sizes or hashes, so none are recorded. `state_keys` is a digest of the (key, shape) pairs of timm's
model for that tag (built on the meta device with the tag's class count): the files on the hub are
that model's state dict, so tests/test_weights.py can check without a download that each tag loads
into the vitlab model built for it.
"""

from __future__ import annotations

import hashlib
import json
import sys

import timm
import torch
from timm.models import get_pretrained_cfg
from timm.models._registry import _model_default_cfgs

import vitlab


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A short digest of the sorted (key, shape) pairs: what a strict load compares."""
    pairs = sorted((k, list(v.shape)) for k, v in state_dict.items())
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def describe(name: str, tag: str) -> dict:
    cfg = get_pretrained_cfg(f"{name}.{tag}").to_dict()
    with torch.device("meta"):
        model = timm.create_model(f"{name}.{tag}", pretrained=False)
    return dict(
        tag=tag,
        hf_hub_id=cfg["hf_hub_id"],
        num_classes=cfg["num_classes"],
        input_size=list(cfg["input_size"]),
        crop_pct=cfg["crop_pct"],
        mean=list(cfg["mean"]),
        std=list(cfg["std"]),
        interpolation=cfg["interpolation"],
        license=cfg.get("license"),
        origin=cfg.get("url") or cfg.get("origin_url") or None,
        state_keys=state_digest(model.state_dict()),
    )


def main(out: str) -> None:
    table: dict[str, list[dict]] = {}
    for name in vitlab.list_models():
        if name not in _model_default_cfgs:
            continue
        tags = [t for t in _model_default_cfgs[name].tags if t and get_pretrained_cfg(f"{name}.{t}").hf_hub_id]
        if tags:
            table[name] = [describe(name, tag) for tag in tags]
    table = {"_source": f"timm {timm.__version__} pretrained_cfgs (tools/timm_weights.py)", **table}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items() if k == "_source"]
    for name, rows in table.items():
        if name != "_source":
            lines.append(f" {json.dumps(name)}: [\n  " + ",\n  ".join(map(json.dumps, rows)) + "\n ]")
    with open(out, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"{sum(len(v) for k, v in table.items() if k != '_source')} tags of {len(table) - 1} variants -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
