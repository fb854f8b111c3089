"""SETR: what the paper and the official release fix beyond the contract.

The main decoders' outputs are checked against the official code by tests/parity (fixtures from
tools/fixtures/setr.py); here, the auxiliary heads against the same fixtures, the parameter counts,
the official checkpoints' key names and shapes at full size, and decoders over other backbones.
"""

import json
import re
from pathlib import Path

import pytest
import torch

import vitlab
from tests.helpers import max_rel_error
from tests.parity.test_fixtures import read_fixture
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.layouts import convert_state_dict
from vitlab.registry import get_entry
from vitlab.segmentation.setr import SETR

FIXTURES = sorted((Path(__file__).parents[1] / "parity" / "fixtures").glob("setr_*.safetensors"))


def millions(name: str, without_auxiliary_heads: bool) -> float:
    with torch.device("meta"):
        model = vitlab.create_model(name)
    return round(
        sum(p.numel() for n, p in model.named_parameters() if not (without_auxiliary_heads and "auxiliary" in n)) / 1e6,
        2,
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [("setr_naive_vit_large_768", 305.74), ("setr_pup_vit_large_768", 309.61), ("setr_mla_vit_large_768", 310.75)],
)
def test_parameters_at_768_with_19_classes_without_the_auxiliary_heads(name, expected):
    """The issue's 305.7 / 309.6 / 310.8M: the official layout at 768 (Cityscapes, 19 classes), the unused
    conv_seg included, the auxiliary heads (training only) not. (MLA is 310.747M; 310.8 rounds 310.75.)"""
    assert millions(name, without_auxiliary_heads=True) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("setr_naive_vit_large_512", 305.67), ("setr_pup_vit_large_512", 318.31), ("setr_mla_vit_large_512", 310.57)],
)
def test_parameters_at_512_with_150_classes_and_the_auxiliary_heads(name, expected):
    """Every parameter of the ADE20K models, auxiliary heads included: the figures that
    references/segmentation.md recalls from the paper's Table 2 (305.67, 318.31, 310.57M)."""
    assert millions(name, without_auxiliary_heads=False) == expected


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_auxiliary_heads_match_the_official_ones(path):
    meta, state, inputs, _ = read_fixture(path)
    model = vitlab.create_model(meta["model"], **json.loads(meta["kwargs"]))
    load_state_dict(model, state, source=path.name)
    model.double().eval()
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        expected = [f.get_tensor(f"aux.{i}") for i in range(len(model.auxiliary_head))]
    with torch.no_grad():
        x = inputs.double()
        if model.decoder == "mla":
            features = model._features(x, sorted(set(model.mla_indices)))
            maps = model.neck([features[i] for i in model.mla_indices])
        else:
            maps = model._features(x, sorted({head.in_index for head in model.auxiliary_head}))
        actual = [head(maps[head.in_index]) for head in model.auxiliary_head]
    for i, (ours, ref) in enumerate(zip(actual, expected, strict=True)):
        assert ours.shape == ref.shape
        assert max_rel_error(ours, ref) < 1e-8, f"{path.name}: auxiliary head {i}"


def pattern(key: str) -> str:
    return re.sub(r"blocks\.\d+\.", "blocks.N.", key)


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
def test_full_size_keys_are_the_official_keys(decoder):
    """The official code's key names (the fixture, made by it) are those of the full-size model, and the
    shapes are the released checkpoints' (ViT-L/16 at 768, 19 classes, channels 256 and 512)."""
    fixture = next(p for p in FIXTURES if p.name.startswith(f"setr_{decoder}_vit_large_768-official"))
    official = {pattern(k) for k in read_fixture(fixture)[1]}
    with torch.device("meta"):
        model = vitlab.create_model(f"setr_{decoder}_vit_large_768")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted, layout = convert_state_dict(model, {k: torch.empty(0) for k in read_fixture(fixture)[1]})
    assert {pattern(k) for k in shapes} == {pattern(k) for k in converted}
    assert layout == ("official" if decoder == "mla" else "native") and len(official) > 20
    assert not any(k.startswith("backbone.norm.") or k.startswith("backbone.head") for k in shapes)
    assert shapes["backbone.pos_embed"] == (1, 48 * 48 + 1, 1024)
    assert shapes["backbone.blocks.23.attn.qkv.weight"] == (3072, 1024)
    assert shapes["decode_head.conv_seg.weight"] == (19, 512, 1, 1)
    if decoder == "mla":
        assert shapes["neck.mla.mla_p2_1x1.0.weight"] == (256, 1024, 1, 1)
        assert shapes["decode_head.mlahead.head5.3.weight"] == (128, 128, 3, 3)
        assert shapes["decode_head.cls.weight"] == (19, 512, 3, 3)
        assert shapes["auxiliary_head.3.aux.weight"] == (19, 256, 1, 1)
    elif decoder == "pup":
        assert shapes["decode_head.conv_0.weight"] == (256, 1024, 3, 3)
        assert shapes["decode_head.conv_4.weight"] == (19, 256, 1, 1)
        assert shapes["auxiliary_head.3.conv_0.weight"] == (256, 1024, 3, 3)
    else:
        assert shapes["decode_head.conv_0.weight"] == (256, 1024, 1, 1)  # released Naive configs: 1x1
        assert shapes["auxiliary_head.2.conv_1.weight"] == (19, 256, 1, 1)


def test_a_checkpoint_of_another_decoder_is_refused_with_the_keys_named():
    naive = read_fixture(next(p for p in FIXTURES if "naive" in p.name))[1]
    kwargs = json.loads(read_fixture(next(p for p in FIXTURES if "pup_vit_large_768-official" in p.name))[0]["kwargs"])
    pup = vitlab.create_model("setr_pup_vit_large_768", **kwargs)
    with pytest.raises(CheckpointError, match=r"missing keys .*decode_head\.conv_2\.weight"):
        load_state_dict(pup, naive, source="naive.safetensors")


def test_an_mmseg_checkpoint_converts_into_pup_only():
    meta, state, _, _ = read_fixture(next(p for p in FIXTURES if "-mmseg-" in p.name))
    assert any(k.startswith("backbone.layers.0.attn.attn.in_proj") for k in state)
    naive = vitlab.create_model("setr_naive_vit_large_768", **json.loads(meta["kwargs"]))
    with pytest.raises(ValueError, match="converts into the PUP decoder, not 'naive'"):
        load_state_dict(naive, state)


def test_naive_and_pup_over_a_pyramid_backbone():
    swin = dict(backbone="swin_tiny_patch4_window7_224", backbone_args=get_entry("swin_tiny_patch4_window7_224").tiny)
    for decoder in ("naive", "pup"):
        model = SETR(decoder, num_classes=3, img_size=64, channels=8, aux_indices=[1], **swin).eval()
        assert model.decode_head.norm.normalized_shape == (64,)  # the last Swin stage, stride 32
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)
        assert len(model.train().forward_logits(torch.randn(1, 3, 64, 64)).aux) == 1
    with pytest.raises(ValueError, match=r"MLA sums maps of one stride: levels \(0, 1, 2, 3\) have strides"):
        SETR("mla", num_classes=3, img_size=64, **swin)


def test_mla_over_a_vit_keeps_the_class_token_out_of_the_blocks():
    model = vitlab.create_model("setr_mla_vit_tiny_512", num_classes=3, **get_entry("setr_mla_vit_tiny_512").tiny)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model.eval()(x)
        model.backbone.cls_token.add_(10.0)
        assert torch.equal(model(x), before)
    assert "backbone.cls_token" in model.unused_parameter_names()


def test_an_mmcv_era_file_loads_through_create_model(tmp_path):
    """The release's files nest the weights under `state_dict`, beside mmcv's `meta`."""
    path = next(p for p in FIXTURES if p.name.startswith("setr_mla_vit_large_768-official"))
    meta, state, inputs, expected = read_fixture(path)
    torch.save({"meta": {"mmseg_version": "0.6.0+1361561", "CLASSES": ("road", "sidewalk")}, "state_dict": state},
               tmp_path / "setr_mla.pth")  # fmt: skip
    model = vitlab.create_model(meta["model"], pretrained=tmp_path / "setr_mla.pth", **json.loads(meta["kwargs"]))
    with torch.no_grad():
        assert max_rel_error(model.double().eval()(inputs.double()), expected) < 1e-8
