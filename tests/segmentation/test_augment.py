"""Joint augmentation: labels follow their pixels through rescale, crop and flip; masks are resized by
nearest neighbour and padded with 255; cat_max_ratio retries crops dominated by one class; the
photometric distortion touches images only; everything follows torch's seed."""

import torch

from vitlab.data.seg_augment import SegmentationAugment, crop_offset, photometric_distortion

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def coded_batch(batch: int = 3, side: int = 16, block: int = 1):
    """Images whose red channel is 40 x the label of the pixel (and whose other channels are noise);
    labels constant over `block` x `block` squares."""
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 5, (batch, side // block, side // block), generator=g, dtype=torch.uint8)
    masks = masks.repeat_interleave(block, 1).repeat_interleave(block, 2)
    masks[:, :2] = 255
    images = torch.randint(0, 256, (batch, 3, side, side), generator=g, dtype=torch.uint8)
    images[:, 0] = torch.where(masks == 255, 250, masks * 40)
    return images, masks


def test_labels_follow_their_pixels_through_rescale_crop_and_flip():
    images, masks = coded_batch(block=4)
    augment = SegmentationAugment(12, MEAN, STD, ratio_range=(0.5, 2.0), cat_max_ratio=0.75, photometric=False)
    for seed in range(5):
        torch.manual_seed(seed)
        x, labels = augment(images, masks)
        red = (x[:, 0] * 255).round()
        assert x.shape == (3, 3, 12, 12) and labels.shape == (3, 12, 12) and labels.dtype == torch.long
        assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 4, 255}  # nearest neighbour: no blended labels
        kept = labels != 255
        # bilinear images and nearest masks agree inside the squares; exactly at ratio 1 (below)
        agree = (red[kept] - labels[kept] * 40).abs() <= 20
        assert agree.float().mean() > 0.75


def test_at_ratio_one_a_crop_is_an_exact_window_of_the_pair_and_flips_together():
    images, masks = coded_batch(batch=8)
    augment = SegmentationAugment(10, MEAN, STD, ratio_range=(1.0, 1.0), cat_max_ratio=1.0, photometric=False)
    torch.manual_seed(3)
    x, labels = augment(images, masks)
    red = (x[:, 0] * 255).round()
    assert torch.equal(torch.where(labels == 255, 250, labels * 40).float(), red)
    flipped = 0
    for i in range(8):  # each crop is a window of its pair, mirrored or not
        windows = [masks[i, t : t + 10, s : s + 10].long() for t in range(7) for s in range(7)]
        found = any(torch.equal(labels[i], w) or torch.equal(labels[i], w.flip(-1)) for w in windows)
        assert found
        flipped += not any(
            torch.equal(labels[i], masks[i, t : t + 10, s : s + 10].long()) for t in range(7) for s in range(7)
        )
    assert 0 < flipped < 8


def test_a_small_rescale_is_padded_with_ignore_at_the_bottom_and_right():
    images, masks = coded_batch(batch=2, side=16)
    augment = SegmentationAugment(12, MEAN, STD, ratio_range=(0.5, 0.5), hflip=0.0, photometric=True)
    x, labels = augment(images, masks)
    assert (labels[:, 8:] == 255).all() and (labels[:, :, 8:] == 255).all()
    assert (x[:, :, 8:] == 0).all() and (x[:, :, :, 8:] == 0).all()  # padding stays black after the distortion


def test_cat_max_ratio_retries_crops_that_one_class_dominates():
    mask = torch.zeros(20, 20, dtype=torch.uint8)
    mask[:6, :6] = 1  # a crop of 8 passes only if it holds more than 16 pixels of the block

    def passing(ratio: float) -> float:
        torch.manual_seed(0)
        ok = 0
        for _ in range(300):
            top, left = crop_offset(mask, 8, ratio)
            counts = torch.bincount(mask[top : top + 8, left : left + 8].flatten().long())
            ok += len(counts) > 1 and counts.max() / counts.sum() < 0.75
        return ok / 300

    assert passing(1.0) < 0.15  # one draw: 10 of the 169 offsets pass
    assert passing(0.75) > 0.3  # up to ten draws: about 45%


def test_photometric_distortion_changes_images_within_range():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8) * 255
    y = photometric_distortion(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 255
    changed = (y - x).abs().flatten(1).max(dim=1).values > 1
    assert 0 < changed.sum() <= 16


def test_the_same_seed_gives_the_same_batch():
    images, masks = coded_batch()
    augment = SegmentationAugment(12, (0.5,) * 3, (0.2,) * 3)
    torch.manual_seed(7)
    first = augment(images, masks)
    torch.manual_seed(7)
    second = augment(images, masks)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
