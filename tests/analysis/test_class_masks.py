"""Segmenter's class masks: eq. 1's products read per patch and class by hand, the areas, the picture."""

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.analysis.class_masks import draw_class_masks, pick_classes, record_class_masks
from vitlab.cli import main
from vitlab.registry import get_entry


def tiny(name, **overrides):
    torch.manual_seed(0)
    return vitlab.create_model(name, **{**get_entry(name).tiny, "num_classes": 7, **overrides}).eval()


def products_by_hand(model, x):
    """Masks(z_M, c) = <z_i P / |z_i P|, c_k Q / |c_k Q|> for every patch i and class k, one pair at a time."""
    head = model.decode_head
    with torch.no_grad():
        tokens = model.backbone.forward_features(x)[:, model.backbone.num_prefix_tokens :]
        z = torch.cat([head.proj_dec(tokens), head.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for block in head.blocks:
            z = block(z)
        z = head.decoder_norm(z)
    patches, classes = z[:, : -head.num_classes], z[:, -head.num_classes :]
    out = torch.zeros(x.shape[0], head.num_classes, patches.shape[1], dtype=x.dtype)
    for b in range(x.shape[0]):
        for i in range(patches.shape[1]):
            p = patches[b, i] @ head.proj_patch
            for k in range(head.num_classes):
                c = classes[b, k] @ head.proj_classes
                out[b, k, i] = torch.dot(p, c) / (p.norm() * c.norm())
    return out


def test_products_are_eq1_and_the_logits_are_their_layer_norm():
    model = tiny("segmenter_tiny_mask").double()
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64)  # a 3 x 4 grid of 16-pixel patches, the last ones padded
    masks = record_class_masks(model, x)
    assert masks.products.shape == (2, 7, 3, 4) and masks.cell == (16, 16)
    torch.testing.assert_close(masks.products.flatten(2), products_by_hand(model, x), rtol=1e-12, atol=1e-12)
    assert (masks.products.abs() <= 1 + 1e-12).all()  # cosines
    with torch.no_grad():
        logits = model.forward_logits(x).logits
    normed = model.decode_head.mask_norm(masks.products.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(normed, logits, rtol=1e-12, atol=1e-12)


def test_areas_are_the_share_of_pixels_each_class_wins():
    model = tiny("segmenter_tiny_mask")
    x = torch.randn(2, 3, 40, 56)
    masks = record_class_masks(model, x)
    with torch.no_grad():
        winners = model(x).argmax(1)
    for b in range(2):
        counts = torch.bincount(winners[b].flatten(), minlength=7).double() / (40 * 56)
        torch.testing.assert_close(masks.areas[b], counts)
    torch.testing.assert_close(masks.areas.sum(1), torch.ones(2, dtype=torch.float64))
    order = pick_classes(masks, top=3, batch=1)
    assert len(order) == 3 and list(masks.areas[1, order]) == sorted(masks.areas[1, order].tolist(), reverse=True)
    assert pick_classes(masks, [5, 0]) == [5, 0]
    with pytest.raises(ValueError, match="out of range: the model has 7 classes"):
        pick_classes(masks, [7])


def test_linear_decoder_has_no_class_masks():
    with pytest.raises(ValueError, match="no class embeddings"):
        record_class_masks(tiny("segmenter_tiny_linear"), torch.randn(1, 3, 32, 32))


def test_picture_has_a_panel_per_class(tmp_path):
    model = tiny("segmenter_tiny_mask")
    masks = record_class_masks(model, torch.randn(1, 3, 48, 64))
    path = draw_class_masks(masks, tmp_path / "masks.png", None, [0, 3, 6], names=[f"c{i}" for i in range(7)])
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10


def test_the_attention_command_draws_the_masks_beside_the_maps(tmp_path, capsys):
    picture = tmp_path / "picture.png"
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[10:30, 20:50] = (220, 40, 40)
    Image.fromarray(pixels).save(picture)
    out = tmp_path / "maps.png"
    args = ["--threads", "1", "attention", "--model", "segmenter_tiny_mask", "--tiny", str(picture), "--img-size", "64"]
    assert main([*args, "--output", str(out), "--classes", "4,9"]) == 0
    printed = capsys.readouterr().out
    assert "class masks of classes [4, 9]" in printed and out.exists()
    masks = np.asarray(Image.open(tmp_path / "maps-masks.png").convert("RGB"), dtype=np.float64)
    assert masks.std() > 10
    assert main([*args, "--output", str(out), "--top-classes", "3"]) == 0
    assert "class masks of classes [" in capsys.readouterr().out
    assert main([*args, "--output", str(out), "--classes", "150"]) == 2
    assert "out of range" in capsys.readouterr().err
    linear = ["--threads", "1", "attention", "--model", "segmenter_tiny_linear", "--tiny", str(picture)]
    assert main([*linear, "--output", str(out), "--classes", "1"]) == 2
    assert "no class embeddings" in capsys.readouterr().err
