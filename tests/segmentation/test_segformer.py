"""SegFormer: what the paper and the official release specify. Parity with the official code and
HF transformers is in tests/parity (fixtures from tools/fixtures/segformer.py)."""

import re

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.registry import get_entry
from vitlab.segmentation.segformer import AllMLPHead, MixVisionTransformer, SegFormer

# Parameters at 150 classes, in millions, 2 decimals: the B0-B2 (the paper's 3.8 / 13.7 / 27.5),
# and B3-B5 as HF transformers' SegformerForSemanticSegmentation counts them (references/segmentation.md 3.4).
PARAMS = dict(segformer_b0=3.75, segformer_b1=13.72, segformer_b2=27.46, segformer_b3=47.34)
PARAMS.update(segformer_b4=64.11, segformer_b5=84.71)


def tiny(name: str = "segformer_b0", **overrides) -> SegFormer:
    torch.manual_seed(0)
    return vitlab.create_model(name, **{**get_entry(name).tiny, **overrides}).eval()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == PARAMS[name]


def test_variants_follow_the_official_configs():
    for b, width in [("b0", 256), ("b1", 256), ("b2", 768), ("b3", 768), ("b4", 768), ("b5", 768)]:
        with torch.device("meta"):
            model = vitlab.create_model(f"segformer_{b}")
        assert isinstance(model.backbone, MixVisionTransformer)
        assert model.decode_head.linear_pred.in_channels == width
        assert model.decode_head.linear_pred.out_channels == 150
        mlp = model.backbone.stages[0].blocks[0].mlp
        assert mlp.fc1.out_features == 4 * mlp.fc1.in_features  # Mix-FFN expansion 4 in every stage
    assert get_entry("segformer_b0_cityscapes").num_classes == 19
    assert get_entry("segformer_b5").preprocess.input_size == (3, 640, 640)  # B5 trains on 640 crops on ADE20K


def test_macs_of_b0_at_512_count_the_attention_products():
    info = vitlab.model_info("segformer_b0")
    assert info["input_size"] == (3, 512, 512)
    assert info["gmacs"] == pytest.approx(8.39, abs=0.01)  # paper 8.4; 7.35 without the attention products


def test_logits_at_stride_4_and_at_the_input_size():
    model = tiny()
    x = torch.randn(2, 3, 37, 53)
    out = model.forward_logits(x)
    assert out.logits.shape == (2, 150, 10, 14) and out.aux == []  # ceil(37 / 4), ceil(53 / 4)
    assert model(x).shape == (2, 150, 37, 53)
    expected = F.interpolate(out.logits, size=(37, 53), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(x), expected)


def test_too_small_inputs_are_refused_with_the_size_needed():
    with pytest.raises(ValueError, match="29"):
        tiny()(torch.randn(1, 3, 28, 64))


def test_decoder_concatenates_coarsest_first():
    """The fuse layer's first C input channels belong to the coarsest level (c4), its last to c1."""
    torch.manual_seed(0)
    head = AllMLPHead([4, 6, 8, 10], num_classes=3, embed_dim=5).eval()
    with torch.no_grad():
        head.linear_fuse.conv.weight.zero_()
        head.linear_fuse.conv.weight[:, :5] = torch.randn(5, 5, 1, 1)  # reads only the first slot
    features = [torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate([4, 6, 8, 10])]
    base = head(features)
    finest = [features[0] + 1, *features[1:]]
    coarsest = [*features[:3], features[3] + 1]
    torch.testing.assert_close(head(finest), base)
    assert not torch.allclose(head(coarsest), base)


def test_decoder_matches_the_equations_written_out():
    """Eq. 1 of the paper, per level then fused, with the concatenation made explicit as a sum of
    per-level products with slices of the fuse weight (the linear maps commute with upsampling)."""
    torch.manual_seed(1)
    dims, width = [4, 6, 8, 10], 5
    head = AllMLPHead(dims, num_classes=3, embed_dim=width).eval()
    with torch.no_grad():
        head.linear_fuse.bn.running_mean.uniform_(-1, 1)
        head.linear_fuse.bn.running_var.uniform_(0.5, 2)
    features = [torch.randn(2, c, 12 // 2**i + 1, 20 // 2**i) for i, c in enumerate(dims)]
    size = features[0].shape[-2:]
    fuse = head.linear_fuse.conv.weight[:, :, 0, 0]
    total = 0
    for i, fmap in enumerate(features):
        proj = getattr(head, f"linear_c{i + 1}").proj
        slot = len(dims) - 1 - i  # [c4, c3, c2, c1]
        y = torch.einsum("oc,bchw->bohw", proj.weight, fmap) + proj.bias[:, None, None]
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        total = total + torch.einsum("oc,bchw->bohw", fuse[:, slot * width : (slot + 1) * width], y)
    bn = head.linear_fuse.bn
    fused = (total - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var + bn.eps)[:, None, None]
    fused = torch.relu(fused * bn.weight[:, None, None] + bn.bias[:, None, None])
    pred = head.linear_pred
    expected = torch.einsum("oc,bchw->bohw", pred.weight[:, :, 0, 0], fused) + pred.bias[:, None, None]
    torch.testing.assert_close(head(features), expected)


def test_decoder_on_another_backbone_reads_its_feature_info():
    with torch.device("meta"):
        model = vitlab.create_model("segformer_b0", num_classes=19, backbone="swin_tiny_patch4_window7_224")
    assert [getattr(model.decode_head, f"linear_c{i}").proj.in_features for i in (1, 2, 3, 4)] == [96, 192, 384, 768]
    assert model.decode_head.linear_pred.out_channels == 19 and model.output_stride == 4
    swin_tiny = get_entry("swin_tiny_patch4_window7_224").tiny
    model = tiny(num_classes=19, backbone="swin_tiny_patch4_window7_224", backbone_args=swin_tiny)
    assert model.forward_logits(torch.randn(1, 3, 64, 96)).logits.shape == (1, 19, 16, 24)
    assert not any(k.startswith("backbone.head") for k in model.state_dict())  # built without its classifier


def test_decoder_on_chosen_levels():  # `create_model`'s own out_indices is for features_only
    model = tiny(feature_levels=(1, 2, 3))
    assert model.output_stride == 8
    assert model.forward_logits(torch.randn(1, 3, 64, 64)).logits.shape == (1, 150, 8, 8)


def test_attention_keys_come_from_the_reduced_map():
    model = tiny()
    with vitlab.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    # Stage 1: a 16x24 map, keys from its reduction by 8 (2x3); stage 4: 2x3, global attention.
    assert maps["backbone.stages.0.blocks.0.attn"][0].shape == (1, 1, 16 * 24, 2 * 3)
    assert maps["backbone.stages.3.blocks.0.attn"][0].shape == (1, 4, 6, 6)


def test_checkpoint_of_another_variant_is_refused_by_key():
    state = tiny().state_dict()
    other = tiny(decoder_dim=32)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys .*decode_head\.linear_c1\.proj\.weight"):
        load_state_dict(other, state)
    with pytest.raises(CheckpointError, match="classifier for 150 classes, the model 19"):
        load_state_dict(tiny(num_classes=19), state)
    model = tiny(num_classes=19)
    assert load_state_dict(model, state, reset_head="auto") == "native"  # fine-tuning on a new label set
    torch.testing.assert_close(model.decode_head.linear_c1.proj.weight, state["decode_head.linear_c1.proj.weight"])


def test_official_checkpoint_keys_and_unused_conv_seg():
    """The official names (conv_seg included) load into vitlab's, every weight where it belongs."""
    model = tiny()
    native = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state = {_official_name(k): v for k, v in native.items()}
    assert "backbone.block1.0.attn.kv.weight" in state and "backbone.norm4.bias" in state
    state["decode_head.conv_seg.weight"] = torch.zeros(150, 128, 1, 1)  # mmseg's BaseDecodeHead leaves it
    state["decode_head.conv_seg.bias"] = torch.zeros(150)
    assert load_state_dict(model, state) == "official"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, native[key])


def _official_name(key: str) -> str:
    """vitlab's MiT names as the official release writes them (the inverse of the converter, written out)."""
    key = key.replace("backbone.patch_embed.", "backbone.patch_embed1.")
    key = re.sub(r"backbone\.stages\.(\d)\.downsample\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.", key)
    key = re.sub(r"backbone\.stages\.(\d)\.blocks\.", lambda m: f"backbone.block{int(m[1]) + 1}.", key)
    key = re.sub(r"backbone\.stages\.(\d)\.norm\.", lambda m: f"backbone.norm{int(m[1]) + 1}.", key)
    return key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")


def test_hf_config_reader_uses_eps_1e5_everywhere():
    from vitlab.layouts import config_overrides

    config = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8])
    config.update(sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=256, layer_norm_eps=1e-6)
    config.update(id2label={str(i): f"c{i}" for i in range(19)}, classifier_dropout_prob=0.1)
    args = config_overrides(SegFormer, config)
    assert args["num_classes"] == 19 and args["decoder_dim"] == 256
    assert args["backbone_args"]["norm_eps"] == args["backbone_args"]["embed_norm_eps"] == 1e-5
    with pytest.raises(CheckpointError, match="patch_sizes"):
        config_overrides(SegFormer, dict(config, patch_sizes=[4, 2, 2, 2]))
