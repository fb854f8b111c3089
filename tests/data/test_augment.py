"""Batched augmentation: shapes, determinism under a seed, evaluation preprocessing."""

import torch

from vitlab.data.augment import EvalPreprocess, TrainAugment, random_translate


def test_every_augmentation_runs_on_a_batch_and_follows_the_seed():
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    augment = TrainAugment(
        32, (0.5,) * 3, (0.25,) * 3, 3, "rrc", hflip=0.5, rand_augment="rand-m9-n2", reprob=1.0, color_jitter=0.4
    )
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    again = augment(images)
    assert first.shape == (6, 3, 32, 32) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    jitter = TrainAugment(32, (0.5,) * 3, (0.25,) * 3, 3, "rrc", color_jitter=0.4)
    assert jitter(images).shape == (6, 3, 32, 32)


def test_random_translation_moves_whole_images():
    x = torch.zeros(4, 1, 6, 6)
    x[:, :, 2, 3] = 1.0
    torch.manual_seed(0)
    moved = random_translate(x, 2)
    assert moved.shape == x.shape and (moved.sum(dim=(1, 2, 3)) <= 1).all()
    assert not torch.equal(moved, x)


def test_eval_preprocess_crops_the_centre_and_normalises():
    images = torch.zeros(1, 1, 10, 10, dtype=torch.uint8)
    images[:, :, 1:9, 1:9] = 255
    out = EvalPreprocess(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), channels=3)(images)
    assert out.shape == (1, 3, 8, 8) and torch.all(out == 1.0)  # grey repeated to RGB, (1 - 0.5) / 0.5
