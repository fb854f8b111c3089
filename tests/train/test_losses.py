"""Distillation and patch-diversification losses against values computed by hand; Mixup/CutMix targets;
parameter groups and the schedule."""

import math

import pytest
import torch

import vitlab
from vitlab.data.augment import Mixup, one_hot, parse_rand_augment
from vitlab.train.losses import (
    DistillationLoss,
    PatchMixingLoss,
    hard_distillation,
    patch_contrastive_loss,
    patch_cosine_loss,
    soft_distillation,
    soft_target_cross_entropy,
)
from vitlab.train.optim import cosine_lr, layer_ids, param_groups

LN3 = math.log(3.0)


def test_soft_target_cross_entropy():
    logits = torch.tensor([[0.0, LN3]])  # softmax = (1/4, 3/4)
    assert soft_target_cross_entropy(logits, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(
        -0.5 * math.log(0.25) - 0.5 * math.log(0.75)
    )
    smoothed = one_hot(torch.tensor([1]), 2, smoothing=0.2)
    assert smoothed.tolist() == [[pytest.approx(0.1), pytest.approx(0.9)]]


def test_soft_distillation_by_hand():
    student = torch.zeros(1, 2)  # uniform
    teacher = torch.tensor([[LN3, 0.0]])  # (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert soft_distillation(student, teacher, tau=1.0).item() == pytest.approx(kl / 2)  # divided by B x C = 2
    # tau = 2: teacher / 2 gives (sqrt3, 1) / (sqrt3 + 1); the KL is multiplied by tau^2 = 4.
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert soft_distillation(student, teacher, tau=2.0).item() == pytest.approx(kl2 * 4 / 2)


def test_hard_distillation_and_the_combined_loss():
    student_cls = torch.tensor([[0.0, LN3]])
    student_dist = torch.tensor([[LN3, 0.0]])  # (3/4, 1/4)
    teacher = torch.tensor([[5.0, -1.0]])  # decides class 0
    assert hard_distillation(student_dist, teacher).item() == pytest.approx(-math.log(0.75))
    targets = torch.tensor([[0.0, 1.0]])
    base = -math.log(0.75)  # CE of the class head against class 1
    loss = DistillationLoss("hard", alpha=0.5)((student_cls, student_dist), targets, teacher)
    assert loss.item() == pytest.approx(0.5 * base + 0.5 * -math.log(0.75))
    soft = DistillationLoss("soft", alpha=0.1, tau=1.0)((student_cls, student_dist), targets, teacher)
    expected = 0.9 * base + 0.1 * soft_distillation(student_dist, teacher, 1.0).item()
    assert soft.item() == pytest.approx(expected)
    # A student without a distillation token uses its single output for both terms.
    single = DistillationLoss("hard", alpha=1.0)(student_dist, targets, teacher)
    assert single.item() == pytest.approx(-math.log(0.75))


def test_patch_cosine_by_hand():
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # |cos|: (1,2) = 0, (1,3) = (2,3) = 1/sqrt2, each pair counted twice over the 6 ordered pairs.
    assert patch_cosine_loss(patches).item() == pytest.approx(4 / math.sqrt(2) / 6)
    assert patch_cosine_loss(torch.tensor([[[1.0, 2.0], [-2.0, -4.0]]])).item() == pytest.approx(1.0)


def test_patch_contrastive_by_hand():
    first = torch.eye(2)[None].requires_grad_()
    last = (torch.eye(2) * 3.0)[None].requires_grad_()  # the norm does not matter, directions do
    loss = patch_contrastive_loss(last, first)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    loss.backward()
    assert first.grad is None and last.grad is not None  # no gradient through the first layer
    swapped = patch_contrastive_loss(torch.eye(2).flip(0)[None], torch.eye(2)[None], tau=0.5)
    assert swapped.item() == pytest.approx(math.log(1 + math.exp(2)))


def test_patch_mixing_by_hand():
    loss = PatchMixingLoss(dim=2, num_classes=2)
    with torch.no_grad():
        loss.head.weight.copy_(torch.eye(2))
        loss.head.bias.zero_()
    patches = torch.tensor([[[LN3, 0.0], [0.0, LN3]]])  # patch logits (3/4, 1/4) and (1/4, 3/4)
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # both patches come from a class-0 image
    assert loss(patches, targets).item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2)


def test_mixup_and_cutmix_targets():
    torch.manual_seed(0)
    x = torch.arange(2.0)[:, None, None, None].expand(2, 1, 8, 8).contiguous()
    labels = torch.tensor([0, 1])
    mixed, targets, _ = Mixup(2, mixup_alpha=1.0, cutmix_alpha=0.0, smoothing=0.0)(x, labels)
    lam = targets[0, 0].item()
    assert torch.allclose(mixed[0], torch.full((1, 8, 8), 1 - lam)) and torch.allclose(targets.sum(1), torch.ones(2))
    for seed in range(5):
        torch.manual_seed(seed)
        cut, targets, patch = Mixup(2, 0.0, 1.0, smoothing=0.0, patch_size=4)(x, labels, with_patches=True)
        pasted = (cut[0] == 1).float().mean().item()  # image 0 holds pixels of image 1 where pasted
        assert targets[0].tolist() == pytest.approx([1 - pasted, pasted])  # lam is the area actually kept
        per_patch = cut[0, 0].unfold(0, 4, 4).unfold(1, 4, 4).mean(dim=(-1, -2)).flatten()
        assert torch.equal(patch[0, :, 1], per_patch)  # boxes snap to the 4x4 patch grid


def test_rand_augment_spec():
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == (2, 27)
    assert parse_rand_augment("rand-m5-n3") == (3, 15)
    with pytest.raises(ValueError, match="rand-m9-n2"):
        parse_rand_augment("autoaugment")


def test_layer_ids_and_groups_for_layer_decay():
    model = vitlab.create_model("vit_tiny_patch16_224", depth=2, embed_dim=8, num_heads=2, num_classes=3, img_size=16)
    ids, depth = layer_ids(model)
    assert depth == 2
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.1.mlp.fc2.bias"] == 2
    assert ids["norm.weight"] == ids["head.weight"] == 3
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert scale[id(params["head.weight"])] == 1.0 and scale[id(params["blocks.1.attn.qkv.weight"])] == 0.5
    assert scale[id(params["pos_embed"])] == 0.125
    assert decay[id(params["pos_embed"])] == 0.0 and decay[id(params["norm.weight"])] == 0.0
    assert decay[id(params["blocks.0.attn.qkv.bias"])] == 0.0 and decay[id(params["head.weight"])] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_layer_ids_of_a_hierarchical_layout():
    model = vitlab.create_model(
        "swin_tiny_patch4_window7_224", embed_dim=8, depths=(2, 2, 1, 1), num_heads=(1, 1, 1, 1)
    )
    ids, depth = layer_ids(model)
    assert depth == 6
    assert ids["patch_embed.proj.weight"] == 0 and ids["layers.0.blocks.1.attn.qkv.weight"] == 2
    assert ids["layers.1.blocks.0.mlp.fc1.bias"] == 3 and ids["layers.3.blocks.0.norm2.weight"] == 6
    assert ids["layers.1.downsample.reduction.weight"] == 3  # patch merging goes with the block it feeds
    assert ids["norm.weight"] == ids["head.fc.weight"] == 7


def test_cosine_schedule_with_warmup():
    values = [cosine_lr(s, total=100, warmup=10, lr=1.0, min_lr=0.0, warmup_lr=0.1) for s in (0, 5, 10, 55, 100)]
    assert values == pytest.approx([0.1, 0.55, 1.0, 0.5, 0.0])
