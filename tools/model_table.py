"""Print the README's model table: every registered variant with params, GMACs and parity coverage.

Parity coverage lists the reference layouts that the fixtures in tests/parity/fixtures check for
the variant's architecture (the fixtures use small configurations of the same class), the
full-size comparisons of tests/live (run by `make test-live`), and, for architectures without
released code, what the unit tests compare the attention layer with.

    python tools/model_table.py > /tmp/models.md
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from safetensors import safe_open

import vitlab
from vitlab.registry import get_entry

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "parity" / "fixtures"

# Checks that are not fixture files, by model class name.
OTHER_CHECKS = {
    "VisionTransformer": "live: every variant timm has vs timm, ViT-B and DeiT-B distilled vs HF",
    "SwinTransformer": "live: every variant vs timm",
    "PaleTransformer": "no released code: layer vs a per-token implementation of the paper (tests/models/test_pale.py)",
    "SASAResNet": "no released code: layer vs the paper's equation pixel by pixel (tests/models/test_sasa.py)",
    "ConViT": "live: every variant vs timm",
    "PyramidVisionTransformerV2": "live: every variant vs timm",
    "DAT": "live: T/S/B vs the release (tag CVPR2022) at 224",
    "PSViT": "live: Ti/14, B/14, B/16, B/18 vs the release at 224 (grid_sample for its CUDA kernel)",
    "T2TViT": "live: every variant vs the release at 224",
    "VTResNet": "no released code: every equation vs an unbatched transcription (tests/models/test_vt.py)",
    "conv_stem_vit": "vitlab's own configuration: no reference",
    "ConvNet": "vitlab's own configuration: no reference",
    "SegFormer": "live: B0 vs HF at 512x384",
    "Segmenter": "live: T linear/mask and S mask vs the release",
    "TransformerSeq2Seq": "nn.Transformer (post-norm, norm_first) in tests/seq2seq/test_parity.py; live: base, big",
    "RecurrentSeq2Seq": "no reference: Bahdanau and Luong scores vs the papers' equations (tests/seq2seq/test_rnn.py)",
    "ImageToSequence": "vitlab's own configuration: its decoder is TransformerSeq2Seq's",
}


def fixture_layouts() -> dict[type, set[str]]:
    layouts: dict[type, set[str]] = defaultdict(set)
    for path in sorted(FIXTURES.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        entry = get_entry(meta["model"])
        reference = meta["reference"].split(" (")[0] + (" reader" if meta["layout"] == "jax" else "")
        reference = re.sub(r"\b([0-9a-f]{7})[0-9a-f]{33}\b", r"\1", reference).replace("@", " ")
        layouts[entry.builder].add(f"{meta['layout']}: {reference}" if meta["layout"] != "native" else reference)
    return layouts


def published(entry) -> str:
    """The default tag of the variant's published weights, its layout and host, and how many more tags."""
    if not entry.weights:
        return "none"
    w = entry.weights[0]
    host = "hub" if w.hf_hub_id else "release"
    more = f" (+{len(entry.weights) - 1})" if len(entry.weights) > 1 else ""
    return f"{w.tag}: {w.layout}, {host}{more}"


def exportable(name: str) -> str:
    """ONNX as `tests/export/test_export.py` checks each family: dynamic, static height and width, static, or no."""
    from vitlab.export.core import dynamic_limit, fixed_batch, onnx_limit

    model = vitlab.create_model(name, **get_entry(name).tiny)
    if onnx_limit(model):
        return "no"
    if fixed_batch(model):
        return "static"
    return "dynamic batch" if dynamic_limit(model) else "dynamic"


def main() -> None:
    layouts = fixture_layouts()
    print("| model | params | GMACs | input | paper | parity checks | weights | ONNX |")
    print("|---|---|---|---|---|---|---|---|")
    for name in vitlab.list_models():
        info = vitlab.model_info(name)
        entry = get_entry(name)
        size = "x".join(str(s) for s in info["input_size"][1:])
        if entry.task == "sequence-to-sequence" and entry.builder.__name__ != "ImageToSequence":
            size = "32 + 32 tokens"  # model_info counts one pair of 32 source and 32 target tokens
        checks = sorted(layouts.get(entry.builder, ()))
        checks = (["fixtures: " + ", ".join(checks)] if checks else []) + [OTHER_CHECKS.get(entry.builder.__name__, "")]
        checked = "; ".join(c for c in checks if c) or "none"
        print(
            f"| {name} | {info['params'] / 1e6:.2f}M | {info['gmacs']:.2f} | {size} | {info['reference']} | {checked} "
            f"| {published(entry)} | {exportable(name)} |"
        )


if __name__ == "__main__":
    main()
