"""What the registry says of published weights, checked without downloading anything."""

import hashlib
import json

import pytest
import torch

import vitlab
from vitlab.registry import UnknownModelError, get_entry
from vitlab.weights import Weights, _timm_table, imagenet_class_names, split_tag

TIMM_TAGS = [(name, row) for name, rows in _timm_table().items() if name != "_source" for row in rows]


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """As tools/timm_weights.py digests timm's model: the sorted (key, shape) pairs a strict load compares."""
    pairs = sorted((k, list(v.shape)) for k, v in state_dict.items())
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name,row", TIMM_TAGS, ids=[f"{n}.{r['tag']}" for n, r in TIMM_TAGS])
def test_every_timm_tag_has_the_keys_and_shapes_of_the_model_built_for_it(name, row):
    """The hub file of a timm tag is timm's model's state dict; timm's model for the tag (its class count)
    was digested by tools/timm_weights.py. vitlab's model built for the same tag must match key for key."""
    with torch.device("meta"):
        model = vitlab.create_model(f"{name}.{row['tag']}")
    assert model.num_classes == row["num_classes"]
    assert state_digest(model.state_dict()) == row["state_keys"]


def test_every_timm_tag_is_registered_default_first():
    listed = vitlab.list_models(pretrained=True)
    assert {f"{n}.{r['tag']}" for n, r in TIMM_TAGS} <= set(listed)
    assert len(TIMM_TAGS) == 71  # timm 1.0.31 publishes 71 tags of the variants vitlab registers
    vit_b = [n for n in listed if split_tag(n)[0] == "vit_base_patch16_224"]
    assert vit_b[0] == "vit_base_patch16_224.augreg2_in21k_ft_in1k" and len(vit_b) == 10
    assert [n for n in listed if n.startswith("swin_tiny_")][0] == "swin_tiny_patch4_window7_224.ms_in1k"
    assert "deit_tiny_patch16_224.fb_in1k" in listed
    assert vitlab.list_models("*in22k*", pretrained=True) == [n for n in listed if "in22k" in n]
    assert not any(n.startswith(("sasa_", "pale_", "convnet_")) for n in listed)


def test_release_weights_name_their_files_and_layouts():
    cswin = get_entry("cswin_large_384").weights
    assert [w.tag for w in cswin] == ["in22k_ft_in1k"] and cswin[0].layout == "official" and cswin[0].ema
    assert cswin[0].url == "https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/cswin_large_384.pth"
    t2t = get_entry("t2t_vit_t_14").weights[0]
    assert t2t.url.endswith("/81.7_T2T_ViTt_14.pth.tar") and t2t.top1 == 81.7 and t2t.ema


def test_tags_resolve_and_unknown_ones_list_what_is_published():
    model = vitlab.create_model("vit_base_patch16_224.augreg_in21k", embed_dim=32, depth=1, num_heads=2)
    assert model.num_classes == 21843  # the tag's classifier, as timm builds it
    assert get_entry("deit_tiny_patch16_224.fb_in1k").name == "deit_tiny_patch16_224"
    with pytest.raises(UnknownModelError, match=r"published: deit_tiny_patch16_224\.fb_in1k"):
        vitlab.create_model("deit_tiny_patch16_224.in21k")
    with pytest.raises(ValueError, match="names published weights"):
        vitlab.create_model("deit_tiny_patch16_224.fb_in1k", pretrained="some/file.pth")
    with pytest.raises(vitlab.checkpoint.CheckpointError, match="no published weights are known for pale_tiny_224"):
        vitlab.create_model("pale_tiny_224", pretrained=True)


def test_weights_need_one_place_and_a_whole_sha256():
    with pytest.raises(ValueError, match="exactly one of hf_hub_id and url"):
        Weights("x")
    with pytest.raises(ValueError, match="64 hexadecimal"):
        Weights("x", url="https://example.org/a.pth", sha256="a1311bcf")


def test_imagenet_names_ship_with_the_package_in_class_order():
    names = imagenet_class_names()
    assert len(names) == 1000
    # well-known indices of the ImageNet-1k label order (synsets sorted by WordNet id)
    assert names[0].startswith("tench") and names[1].startswith("goldfish") and names[967] == "espresso"
    assert names[207].startswith("golden retriever") and names[999].startswith("toilet tissue")
    entry_weights = get_entry("deit_tiny_patch16_224").weights[0]
    assert entry_weights.class_names() == names
    assert get_entry("vit_base_patch16_224.augreg_in21k").weights[0].class_names() == names  # the default's
    in21k = next(w for w in get_entry("vit_base_patch16_224").weights if w.tag == "augreg_in21k")
    assert in21k.class_names() is None  # 21843 classes: no names shipped
