"""Joint image-and-mask augmentation for segmentation, on the training device (mmseg's training pipeline).

For a uint8 batch of images (B, 3, S, S) and masks (B, S, S), in mmseg's order:
1. random rescale: each pair resized by a ratio drawn uniformly from `ratio_range` (image bilinear,
   mask nearest), mmseg's `RandomResize(ratio_range=...)` with the stored side as the base scale;
2. random crop of `crop` x `crop` (mmseg's `RandomCrop`): up to 10 offsets are drawn and the first
   whose crop has more than one class and no class over `cat_max_ratio` of its labelled pixels is
   kept (else the tenth); a side smaller than the crop is taken whole;
3. horizontal flip of the crop with probability `hflip`;
4. photometric distortion of the image only (mmseg's `PhotoMetricDistortion`, on 0..255 values):
   brightness +-32, contrast x[0.5, 1.5] (before or after the colour changes, at random),
   saturation x[0.5, 1.5] and hue +-18 (OpenCV's 0..180 scale, i.e. +-36 degrees), each with
   probability 1/2;
5. padding to `crop` x `crop` (image 0, mask 255) and normalisation.
Every random number comes from torch's generator of the device, which checkpoints save, so a resumed
run draws the same crops as an uninterrupted one. Rescale and crop loop over the batch (each pair
has its own size until cropped; the flip is drawn for the batch and applied to each crop before it
is padded, as in mmseg); the colour changes and normalisation run on the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.data.augment import Normalize
from vitlab.segmentation.base import IGNORE_INDEX


def _uniform(low: float, high: float, device: torch.device, shape=()) -> Tensor:
    return torch.rand(shape, device=device) * (high - low) + low


def crop_offset(mask: Tensor, crop: int, cat_max_ratio: float, attempts: int = 10) -> tuple[int, int]:
    """The (top, left) of a random crop of `mask` (H, W), retried while one class dominates it."""
    h, w = mask.shape
    top = left = 0
    for _ in range(attempts):
        top = int(torch.randint(0, max(h - crop, 0) + 1, (), device=mask.device))
        left = int(torch.randint(0, max(w - crop, 0) + 1, (), device=mask.device))
        if cat_max_ratio >= 1.0:
            break
        labels = mask[top : top + crop, left : left + crop]
        counts = torch.bincount(labels[labels != IGNORE_INDEX].flatten().long())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return top, left


def rescale_and_crop(
    image: Tensor, mask: Tensor, ratio: float, crop: int, cat_max_ratio: float, flip: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """One pair (float image (3, H, W), uint8 mask) rescaled by `ratio`, cropped, flipped if `flip`, and
    padded (bottom and right) to `crop`; also returns where the crop holds image content."""
    h, w = mask.shape
    size = (max(1, round(h * ratio)), max(1, round(w * ratio)))
    if size != (h, w):
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)
    top, left = crop_offset(mask, crop, cat_max_ratio)
    image, mask = image[:, top : top + crop, left : left + crop], mask[top : top + crop, left : left + crop]
    if flip:
        image, mask = image.flip(-1), mask.flip(-1)
    ch, cw = mask.shape
    out_image = image.new_zeros(3, crop, crop)
    out_mask = mask.new_full((crop, crop), IGNORE_INDEX)
    valid = torch.zeros(crop, crop, dtype=torch.bool, device=mask.device)
    out_image[:, :ch, :cw], out_mask[:ch, :cw], valid[:ch, :cw] = image, mask, True
    return out_image, out_mask, valid


def photometric_distortion(x: Tensor) -> Tensor:
    """mmseg's PhotoMetricDistortion on a float batch of 0..255 RGB images, per image (see the module docstring)."""
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    b, device = x.shape[0], x.device
    per = lambda: torch.rand(b, 1, 1, 1, device=device) < 0.5  # noqa: E731
    brightness = torch.where(per(), _uniform(-32, 32, device, (b, 1, 1, 1)), 0.0)
    x = (x + brightness).clamp(0, 255)
    contrast_first = per()
    contrast = torch.where(per(), _uniform(0.5, 1.5, device, (b, 1, 1, 1)), 1.0)
    x = torch.where(contrast_first, (x * contrast).clamp(0, 255), x)
    hsv = rgb_to_hsv(x / 255)
    saturation = torch.where(per()[:, 0], _uniform(0.5, 1.5, device, (b, 1, 1)), 1.0)
    hue = torch.where(per()[:, 0], _uniform(-18, 18, device, (b, 1, 1)) * (2 * torch.pi / 180), 0.0)
    h = torch.remainder(hsv[:, 0] + hue, 2 * torch.pi)
    s = (hsv[:, 1] * saturation).clamp(0, 1)
    x = hsv_to_rgb(torch.stack([h, s, hsv[:, 2]], dim=1)) * 255
    return torch.where(contrast_first, x, (x * contrast).clamp(0, 255)).clamp(0, 255)


class SegmentationAugment(nn.Module):
    """uint8 images (B, 3, S, S) and masks (B, S, S) -> normalised crops (B, 3, crop, crop) and int64 labels."""

    def __init__(
        self,
        crop: int,
        mean: Sequence[float],
        std: Sequence[float],
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip: float = 0.5,
        photometric: bool = True,
    ):
        super().__init__()
        if crop < 1 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"crop {crop} and ratio range {ratio_range} must be positive and ordered")
        self.crop, self.ratio_range, self.cat_max_ratio = crop, tuple(ratio_range), cat_max_ratio
        self.hflip, self.photometric = hflip, photometric
        self.normalize = Normalize(mean, std, 3)

    def forward(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        x = images.float()
        ratios = _uniform(*self.ratio_range, images.device, (len(images),)).tolist()
        flips = (torch.rand(len(images), device=images.device) < self.hflip).tolist()
        parts = [
            rescale_and_crop(x[i], masks[i], ratios[i], self.crop, self.cat_max_ratio, flips[i])
            for i in range(len(images))
        ]
        x = torch.stack([p[0] for p in parts])
        labels = torch.stack([p[1] for p in parts]).long()
        valid = torch.stack([p[2] for p in parts])[:, None]
        if self.photometric:
            x = photometric_distortion(x)
        x = torch.where(valid, x, 0.0)  # the padding stays black, as mmseg pads after the distortion
        return self.normalize(x / 255), labels


class SegmentationPreprocess(nn.Module):
    """uint8 images -> normalised float images (evaluation: no crop, the inference decides)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std, 3)

    def forward(self, images: Tensor) -> Tensor:
        return self.normalize(images.float() / 255)
