"""Model directories and conversion: `save_pretrained` / `from_pretrained`, `vitlab convert`, timm's layout.

Every registered model goes through save -> load on its tiny configuration and must come back bit
for bit (state dict, outputs, name, arguments, class names). The reference fixtures (weights as
each reference names them, and the reference's float64 output) go through `convert` and must give
the reference's output from the written directory. The timm families go vitlab -> timm -> vitlab
bit for bit; where timm is installed, timm itself loads what `--to timm` writes and must compute
vitlab's outputs, and vitlab converts what timm saves.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import vitlab
from tests.helpers import max_rel_error
from vitlab.cli import main
from vitlab.convert import ConvertError, convert, save_pretrained
from vitlab.layouts.timm import FAMILIES, TIMM_NAMES, constructor_arguments
from vitlab.registry import get_entry

NAMES = vitlab.list_models()
FIXTURES = Path(__file__).parent / "parity" / "fixtures"
TIMM_CLASSES = tuple(FAMILIES)


def tiny(name: str, **overrides) -> nn.Module:
    """The tiny model of `name`, class names set, its parameters and BatchNorm statistics moved off their
    initial values (derived buffers, such as PS-ViT's initial grid, are recomputed on loading)."""
    torch.manual_seed(0)
    model = vitlab.create_model(name, **{**get_entry(name).tiny, **overrides})
    with torch.no_grad():
        for key, value in model.state_dict(keep_vars=True).items():
            if value.is_floating_point() and (isinstance(value, nn.Parameter) or ".running_" in key):
                value.add_(torch.rand(value.shape, generator=torch.Generator().manual_seed(value.numel())) * 0.01)
    if isinstance(getattr(model, "num_classes", None), int):
        model.class_names = [f"class-{i}" for i in range(model.num_classes)]
    return model.eval()


def example(model: nn.Module) -> tuple[torch.Tensor, ...]:
    if hasattr(model, "example_inputs"):  # sequence models: tokens, or image strips and tokens
        return model.example_inputs(batch=2)
    return (torch.randn(2, model.in_chans, 64, 64, generator=torch.Generator().manual_seed(1)),)


def arguments(model: nn.Module) -> dict:
    """Every constructor argument the model was built with."""
    return constructor_arguments(model.entry.builder, {**model.entry.config, **model.model_args})


def assert_same_model(loaded: nn.Module, model: nn.Module) -> None:
    assert type(loaded) is type(model) and loaded.entry.name == model.entry.name
    expected, actual = model.state_dict(), loaded.state_dict()
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key
    assert getattr(loaded, "class_names", None) == getattr(model, "class_names", None)
    inputs = example(model)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(*inputs), model(*inputs))


# save_pretrained / from_pretrained on every registered model.
@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_gives_back_the_same_model(name, tmp_path):
    model = tiny(name)
    assert model.save_pretrained(tmp_path / "saved") == tmp_path / "saved"
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["library"] == "vitlab" and config["model"] == name
    assert config["architecture"] == type(model).__name__ and config["task"] == get_entry(name).task
    assert_same_model(type(model).from_pretrained(tmp_path / "saved"), model)
    assert_same_model(vitlab.load_model(tmp_path / "saved"), model)
    assert_same_model(vitlab.create_model(name, pretrained=tmp_path / "saved"), model)


def test_config_json_states_the_model_its_arguments_classes_and_preprocessing(tmp_path):
    model = tiny("deit_tiny_patch16_224", num_classes=3, img_size=96)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_args"] == {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 3, "img_size": 96}
    assert config["class_names"] == ["class-0", "class-1", "class-2"] and config["num_classes"] == 3
    assert config["preprocess"] == {
        "input_size": [3, 96, 96], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "crop_pct": 0.875, "interpolation": "bicubic",
    }  # fmt: skip
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # the file alone rebuilds the model too
        assert f.metadata()["vitlab_model"] == "deit_tiny_patch16_224"
    (tmp_path / "model.safetensors").rename(tmp_path / "alone.safetensors")
    assert vitlab.load_model(tmp_path / "alone.safetensors").num_classes == 3


def test_a_classifier_reset_after_building_is_saved_with_its_class_count(tmp_path):
    model = tiny("swin_tiny_patch4_window7_224")
    model.reset_classifier(7)
    model.class_names = None
    model.save_pretrained(tmp_path)
    assert vitlab.load_model(tmp_path).num_classes == 7


def test_saving_needs_a_model_built_by_name_with_plain_arguments(tmp_path):
    from vitlab.models.vit import VisionTransformer

    with pytest.raises(ConvertError, match="not built by vitlab.create_model"):
        VisionTransformer(embed_dim=16, depth=1, num_heads=2).save_pretrained(tmp_path)
    model = vitlab.create_model("vit_tiny_patch16_224", embed_dim=16, depth=1, num_heads=2)
    model.model_args["norm_layer"] = nn.LayerNorm  # what a hand-edited model could carry
    with pytest.raises(ConvertError, match="norm_layer=.*cannot be written to config.json"):
        save_pretrained(model, tmp_path)


def test_from_pretrained_refuses_a_directory_of_another_class(tmp_path):
    from vitlab.models.swin import SwinTransformer

    tiny("vit_tiny_patch16_224").save_pretrained(tmp_path)
    with pytest.raises(ConvertError, match="holds a vit_tiny_patch16_224 .*not a SwinTransformer"):
        SwinTransformer.from_pretrained(tmp_path)


# convert: every layout of the reference fixtures.
def _one_fixture_per_layout() -> list[Path]:
    seen, chosen = set(), []
    for path in sorted(FIXTURES.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        key = (get_entry(meta["model"]).builder, meta["layout"])
        if key not in seen and meta.get("train_mode", "false") == "false":
            seen.add(key)
            chosen.append(path)
    return chosen


@pytest.mark.parametrize("path", _one_fixture_per_layout(), ids=lambda p: p.stem)
def test_convert_writes_what_reproduces_the_reference_output(path, tmp_path):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        state = {k.removeprefix("state."): f.get_tensor(k) for k in f.keys() if k.startswith("state.")}  # noqa: SIM118
        inputs, expected = f.get_tensor("input").double(), f.get_tensor("output")
    source = tmp_path / "in"
    source.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, source / "model.safetensors")
    if "hf_config" in meta:
        (source / "config.json").write_text(meta["hf_config"])
    kwargs = json.loads(meta["kwargs"])
    done = convert(source, tmp_path / "out", model=meta["model"], overrides=kwargs)
    assert done.layout == meta["layout"] and done.model == meta["model"]
    model = vitlab.load_model(tmp_path / "out").double().eval()
    with torch.no_grad():
        error = max_rel_error(model(inputs), expected)
    assert error < 1e-8, f"{path.name}: max relative error {error:.3g} after convert"


# convert: vitlab <-> timm.
def in_timm_family(name: str) -> bool:
    return get_entry(name).builder in TIMM_CLASSES


TIMM_FAMILY_NAMES = [n for n in NAMES if in_timm_family(n)]
OTHER_FAMILIES = sorted({get_entry(n).builder: n for n in reversed(NAMES) if not in_timm_family(n)}.values())


@pytest.mark.parametrize("name", TIMM_FAMILY_NAMES)
def test_vitlab_to_timm_to_vitlab_is_bit_for_bit(name, tmp_path):
    model = tiny(name)
    model.save_pretrained(tmp_path / "vitlab")
    convert(tmp_path / "vitlab", tmp_path / "timm", to="timm")
    timm_config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert timm_config["label_names"] == model.class_names and "pretrained_cfg" in timm_config
    convert(tmp_path / "timm", tmp_path / "back")
    back = vitlab.load_model(tmp_path / "back")
    assert arguments(back) == arguments(model)
    assert_same_model(back, model)


@pytest.mark.parametrize("name", OTHER_FAMILIES)
def test_to_timm_is_refused_naming_a_family_timm_does_not_have(name, tmp_path):
    tiny(name).save_pretrained(tmp_path / "vitlab")
    builder = get_entry(name).builder
    with pytest.raises(ConvertError, match=f"timm has no {name}: vitlab builds it as {builder.__name__}"):
        convert(tmp_path / "vitlab", tmp_path / "timm", to="timm")
    assert not (tmp_path / "timm").exists()


def test_timm_config_speaks_timm_arguments(tmp_path):
    def written(name, **overrides):
        convert_dir = tmp_path / name
        tiny(name, **overrides).save_pretrained(convert_dir / "vitlab")
        convert(convert_dir / "vitlab", convert_dir / "timm", to="timm")
        return json.loads((convert_dir / "timm" / "config.json").read_text())

    convit = written("convit_tiny")  # vitlab: the model's width; timm: the width per head
    assert (convit["architecture"], convit["model_args"]["embed_dim"], convit["model_args"]["num_heads"]) == (
        "convit_tiny", 8, 4,
    )  # fmt: skip
    assert written("deit_tiny_distilled_patch16_224")["architecture"] == "deit_tiny_distilled_patch16_224"
    assert written("deit_mini_28")["architecture"] == "deit_base_distilled_patch16_224"  # not in timm: every size given
    mini = written("vit_mini_28")
    assert mini["architecture"] == "vit_base_patch16_224" and mini["model_args"]["patch_size"] == 4
    assert mini["model_args"]["in_chans"] == 1 and mini["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert "img_size" not in written("pvt_v2_b0")["model_args"]  # timm's PVT v2 takes none


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("vit_tiny_patch16_224", dict(norm_eps=1e-5), "norm_eps=1e-05; timm's VisionTransformer always has 1e-06"),
        ("vit_tiny_patch16_224", dict(similarity="cosine"), "similarity='cosine'"),
        ("vit_tiny_patch16_224", dict(global_pool="flatten"), "global_pool='flatten'"),
        ("vitc_tiny_s4_32", {}, "vitlab builds it as conv_stem_vit, not a timm family"),  # a ViT with a conv stem
        ("swin_tiny_patch4_window7_224", dict(norm_eps=1e-6), "norm_eps"),
    ],
)
def test_what_timm_cannot_express_is_refused_by_name(name, overrides, message, tmp_path):
    tiny(name, **overrides).save_pretrained(tmp_path / "vitlab")
    with pytest.raises(ConvertError, match=message):
        convert(tmp_path / "vitlab", tmp_path / "timm", to="timm")
    assert not (tmp_path / "timm").exists()


# Bad input.
def test_a_checkpoint_of_another_family_is_refused_naming_file_model_and_keys(tmp_path):
    tiny("swin_tiny_patch4_window7_224").save_pretrained(tmp_path / "swin")
    with pytest.raises(ConvertError) as caught:
        convert(tmp_path / "swin", tmp_path / "out", model="vit_tiny_patch16_224")
    message = str(caught.value)
    assert f"cannot convert {tmp_path / 'swin'} into vit_tiny_patch16_224" in message
    assert "holds a swin_tiny_patch4_window7_224" in message
    assert "missing keys" in message and "blocks.0.attn.qkv.weight" in message
    assert "unexpected keys" in message and "layers.0.blocks.0" in message
    assert not (tmp_path / "out").exists()


def test_an_unknown_layout_is_refused_naming_what_was_recognised(tmp_path):
    torch.save({"state_dict": {"encoder.conv.weight": torch.zeros(2, 3, 1, 1)}}, tmp_path / "mystery.pth")
    with pytest.raises(ConvertError, match="does not say which model it holds: pass --model") as caught:
        convert(tmp_path / "mystery.pth", tmp_path / "out")
    assert "1 tensors (keys such as encoder.conv.weight)" in str(caught.value)
    assert "keys in no foreign layout vitlab knows" in str(caught.value)
    with pytest.raises(ConvertError, match="unexpected keys \\(1\\): encoder.conv.weight"):
        convert(tmp_path / "mystery.pth", tmp_path / "out", model="deit_tiny_patch16_224")


def test_a_foreign_layout_without_a_model_name_says_which_layout_it_looks_like(tmp_path):
    with safe_open(FIXTURES / "swin_tiny_patch4_window7_224-hf.safetensors", "pt") as f:
        state = {k.removeprefix("state."): f.get_tensor(k) for k in f.keys() if k.startswith("state.")}  # noqa: SIM118
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "hf.safetensors")
    with pytest.raises(ConvertError, match="the hf layout of SwinTransformer"):
        convert(tmp_path / "hf.safetensors", tmp_path / "out")


def test_an_existing_output_is_refused_unless_forced(tmp_path):
    tiny("vit_tiny_patch16_224").save_pretrained(tmp_path / "in")
    convert(tmp_path / "in", tmp_path / "out.safetensors")
    (tmp_path / "out.safetensors").write_bytes(b"left alone")
    with pytest.raises(ConvertError, match="out.safetensors and .*config.json already exist.*--force"):
        convert(tmp_path / "in", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == b"left alone"
    convert(tmp_path / "in", tmp_path / "out.safetensors", force=True)
    assert vitlab.load_model(tmp_path / "out.safetensors").entry.name == "vit_tiny_patch16_224"
    with pytest.raises(ConvertError, match="a directory or a .safetensors file, not a .pth"):
        convert(tmp_path / "in", tmp_path / "out.pth")


def test_the_command_line_converts_and_prints_errors_in_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    model = vitlab.create_model("deit_tiny_patch16_224", **get_entry("deit_tiny_patch16_224").tiny, num_classes=2)
    torch.save({"model": model.state_dict()}, tmp_path / "deit.pth")  # a bare training checkpoint, as DeiT's
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    args = ["convert", str(tmp_path / "deit.pth"), str(tmp_path / "out"), "--model", "deit_tiny_patch16_224"]
    tiny_args = json.dumps({**get_entry("deit_tiny_patch16_224").tiny, "num_classes": 2})
    assert main([*args, "--model-args", tiny_args, "--labels", str(tmp_path / "labels.txt")]) == 0
    assert "(native layout) -> deit_tiny_patch16_224 in vitlab's layout" in capsys.readouterr().out
    loaded = vitlab.load_model(tmp_path / "out")
    assert loaded.class_names == ["cat", "dog"] and torch.equal(loaded.head.weight, model.head.weight)
    assert main([*args, "--model-args", tiny_args]) == 2
    assert "already exist" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "out"), str(tmp_path / "t"), "--to", "timm"]) == 0
    assert (
        main(["convert", str(tmp_path / "out"), str(tmp_path / "c"), "--model", "cswin_tiny_224", "--to", "timm"]) == 2
    )
    assert "timm has no cswin_tiny_224: vitlab builds it as CSWinTransformer" in capsys.readouterr().err


# Against timm itself (skipped where timm is not installed).
def test_timm_hosts_exactly_the_names_vitlab_writes_as_timm_architectures():
    timm = pytest.importorskip("timm")
    hosted = set(timm.list_models())
    assert hosted >= TIMM_NAMES
    assert {n for n in TIMM_FAMILY_NAMES if n in hosted} == TIMM_NAMES


@pytest.mark.parametrize("name", TIMM_FAMILY_NAMES)
def test_timm_loads_what_convert_writes_and_computes_the_same(name, tmp_path):
    timm = pytest.importorskip("timm")
    model = tiny(name)
    model.save_pretrained(tmp_path / "vitlab")
    convert(tmp_path / "vitlab", tmp_path / "timm", to="timm")
    reference = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert reference.pretrained_cfg["label_names"] == model.class_names
    channels, *size = reference.pretrained_cfg["input_size"]
    x = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ours, theirs = model.double()(x), reference.double()(x)
    assert max_rel_error(ours, theirs) < 1e-12


TIMM_MADE = {  # timm's own arguments (ConViT's embed_dim is per head)
    "vit_tiny_patch16_224": dict(embed_dim=32, depth=2, num_heads=2),
    "deit_tiny_distilled_patch16_224": dict(embed_dim=32, depth=2, num_heads=2),
    "vit_small_patch16_224": dict(embed_dim=32, depth=2, num_heads=2, global_pool="avg", img_size=96),
    "swin_tiny_patch4_window7_224": dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)),
    "pvt_v2_b2_li": dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1)),
    "convit_tiny": dict(embed_dim=8, depth=2, num_heads=4, local_up_to_layer=1),
}


@pytest.mark.parametrize("name", sorted(TIMM_MADE))
def test_convert_reads_what_timm_saves(name, tmp_path):
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    torch.manual_seed(0)
    reference = timm.create_model(name, num_classes=4, **TIMM_MADE[name]).eval()
    save_for_hf(reference, tmp_path / "timm", model_config=dict(label_names=["a", "b", "c", "d"]))
    done = convert(tmp_path / "timm", tmp_path / "vitlab")  # the name comes from timm's config.json
    assert (done.model, done.layout) == (name, "native")
    model = vitlab.load_model(tmp_path / "vitlab").double().eval()
    assert model.class_names == ["a", "b", "c", "d"]
    side = TIMM_MADE[name].get("img_size", 224)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        assert max_rel_error(model(x), reference.double()(x)) < 1e-12
