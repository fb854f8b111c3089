from functools import partial

import pytest
import torch

import vitlab
from vitlab.layers.embed import ConvStem
from vitlab.models.vit import VisionTransformer, vit_block

# Parameter counts of timm's implementation (references/backbones.md), in millions to 2 decimals.
PARAMS = {
    "vit_tiny_patch16_224": 5.72,
    "vit_small_patch16_224": 22.05,
    "vit_base_patch16_224": 86.57,
    "deit_tiny_distilled_patch16_224": 5.91,
    "deit_small_distilled_patch16_224": 22.44,
    "deit_base_distilled_patch16_224": 87.34,
}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_references(name):
    assert round(vitlab.model_info(name)["params"] / 1e6, 2) == PARAMS[name]


def test_macs_are_counted_with_attention():
    info = vitlab.model_info("deit_tiny_patch16_224")
    assert round(info["gmacs"], 3) == 1.254  # timm with unfused attention counts 1.254 (references)
    assert round(vitlab.model_info("deit_tiny_distilled_patch16_224")["gmacs"], 3) == 1.261


def small(name="vit_small_patch16_224", **kwargs):
    config = dict(embed_dim=48, depth=2, num_heads=3, num_classes=7)
    config.update(kwargs)
    return vitlab.create_model(name, **config).eval()


def test_multiple_of_patch_sizes_match_an_explicitly_padded_input():
    model = small()
    x = torch.randn(1, 3, 200, 180)
    padded = torch.nn.functional.pad(x, (0, 12, 0, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded))


def test_position_table_resized_only_when_the_grid_changes():
    model = small()
    x = torch.randn(1, 3, 224, 224)
    tokens, grid = model.embed(x)
    assert grid == (14, 14) and tokens.shape == (1, 197, 48)
    tokens, grid = model.embed(torch.randn(1, 3, 96, 320))
    assert grid == (6, 20) and tokens.shape == (1, 121, 48)


def test_distilled_returns_both_heads_in_training_and_their_mean_in_eval():
    model = small("deit_small_distilled_patch16_224")
    x = torch.randn(2, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    cls_logits, dist_logits = model(x)
    assert cls_logits.shape == dist_logits.shape == (2, 7)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), (cls_logits + dist_logits).detach() / 2)


def test_global_average_pooling_uses_fc_norm():
    model = small(global_pool="avg")
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.fc_norm, torch.nn.LayerNorm)
    with pytest.raises(ValueError, match="global_pool"):
        small(global_pool="max")


def test_flatten_pooling_classifies_every_patch_token_in_place():
    model = small(global_pool="flatten", img_size=64)  # a 4x4 grid of 48-d tokens
    assert model.head.in_features == model.num_features == 16 * 48
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)[:, 1:]
        expected = model.head(tokens.reshape(2, 16 * 48))
        torch.testing.assert_close(model(x), expected)
        # Unlike average pooling, the head tells where a feature is: swapping two tokens changes the logits.
        swapped = tokens.clone()
        swapped[:, [0, 5]] = tokens[:, [5, 0]]
        assert not torch.allclose(model.head(swapped.reshape(2, -1)), expected)
    model.reset_classifier(3)
    assert model.head.in_features == 16 * 48 and model(x).shape == (2, 3)


def test_flatten_pooling_needs_the_built_size_and_no_distillation_token():
    model = small(global_pool="flatten", img_size=64)
    with pytest.raises(ValueError, match=r"4x4 = 16 patches .* got 36 patches"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="flatten"):
        small("deit_small_distilled_patch16_224", global_pool="flatten")
    # A size that is not a multiple of the patch is padded, so the model takes the size it was built for.
    odd = small(global_pool="flatten", img_size=60)
    assert odd.grid_size == (4, 4) and odd(torch.randn(1, 3, 60, 60)).shape == (1, 7)


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "deit_small_distilled_patch16_224"])
def test_features_only_gives_nchw_maps(name):
    extractor = vitlab.create_model(name, features_only=True, embed_dim=48, depth=8, num_heads=3)
    assert extractor.out_indices == (1, 3, 5, 7)
    assert extractor.channels == [48] * 4 and extractor.reductions == [16] * 4
    maps = extractor(torch.randn(2, 3, 96, 128))
    assert [m.shape for m in maps] == [(2, 48, 6, 8)] * 4
    chosen = vitlab.create_model(name, features_only=True, out_indices=(-1, 0), embed_dim=48, depth=8, num_heads=3)
    assert chosen.out_indices == (7, 0)
    assert [m.shape for m in chosen(torch.randn(1, 3, 64, 64))] == [(1, 48, 4, 4)] * 2
    with pytest.raises(ValueError, match="out of range"):
        vitlab.create_model(name, features_only=True, out_indices=(8,), embed_dim=48, depth=8, num_heads=3)


def test_features_match_the_blocks_outputs():
    model = small(depth=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (last,) = model.forward_intermediates(x, [2])
        tokens, _ = model.embed(x)
        tokens = model.blocks(tokens)
    torch.testing.assert_close(last, tokens[:, 1:].transpose(1, 2).reshape(1, 48, 4, 4))


@pytest.mark.parametrize("similarity", ["cosine", "additive"])
def test_other_similarities_build_a_working_vit(similarity):
    model = small(similarity=similarity)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


def test_the_embedding_and_the_blocks_are_arguments():
    built = []

    def block_fn(index, **kwargs):
        built.append((index, kwargs["drop_path"]))
        return vit_block(**kwargs)

    stem = partial(ConvStem, (8, 16), strides=(2, 2))
    model = VisionTransformer(
        img_size=32,
        embed_dim=16,
        depth=3,
        num_heads=2,
        num_classes=3,
        drop_path_rate=0.2,
        embed_layer=stem,
        block_fn=block_fn,
    )
    assert built == [(0, 0.0), (1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
    assert isinstance(model.patch_embed, ConvStem) and model.patch_size == (4, 4) and model.grid_size == (8, 8)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
