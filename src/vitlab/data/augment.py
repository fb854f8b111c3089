"""Batched augmentation on the training device.

The loader hands over uint8 batches at a fixed size; everything random happens here, on whole
batches, on the device the model runs on (kornia for random resized crops, colour jitter and
RandAugment). All randomness is drawn from torch's generator of that device, whose state the
training checkpoint saves, so a resumed run draws the same crops as an uninterrupted one.

Order (as in DeiT / timm): crop -> flip -> RandAugment or colour jitter -> normalise ->
random erasing -> Mixup / CutMix (on the batch, with soft targets).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def to_float(x: Tensor, channels: int) -> Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1] with `channels` channels (grey images are repeated to RGB)."""
    x = x.float().div_(255.0)
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels}-channel input")


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int = 3):
        super().__init__()
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        if channels != len(mean_t):  # a single-channel model uses the average statistics
            mean_t, std_t = mean_t.mean().expand(channels), std_t.mean().expand(channels)
        self.register_buffer("mean", mean_t.reshape(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("std", std_t.reshape(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def parse_rand_augment(spec: str) -> tuple[int, int]:
    """timm-style "rand-m9-n2" (magnitude on 0-10, number of ops) -> kornia's (n, m on 0-30).

    timm's `mstd` (magnitude noise) and `inc` options have no kornia counterpart and are ignored.
    """
    found = {k: float(v) for k, v in re.findall(r"-(m|n)([\d.]+)", spec)}
    if not spec.startswith("rand") or "m" not in found:
        raise ValueError(f"rand_augment {spec!r}: expected a string like 'rand-m9-n2'")
    magnitude = min(29, max(1, round(found["m"] * 3)))
    return int(found.get("n", 2)), magnitude


def random_translate(x: Tensor, padding: int) -> Tensor:
    """Zero-pad by `padding` and crop back at a random offset per image (the CIFAR/MNIST crop)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def resize_to(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)


def center_crop(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    if h < size or w < size:
        return resize_to(x, size)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_erase(x: Tensor, prob: float, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), attempts: int = 10) -> Tensor:
    """Random erasing (Zhong et al. 2020) in 'pixel' mode: a box of normal noise, on normalised images."""
    b, c, h, w = x.shape
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for i in range(b):
        if torch.rand(()).item() >= prob:
            continue
        for _ in range(attempts):
            area = h * w * torch.empty(()).uniform_(*scale).item()
            aspect = math.exp(torch.empty(()).uniform_(*log_ratio).item())
            eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if eh < h and ew < w:
                top = int(torch.randint(0, h - eh + 1, ()))
                left = int(torch.randint(0, w - ew + 1, ()))
                x[i, :, top : top + eh, left : left + ew] = torch.randn(c, eh, ew, device=x.device, dtype=x.dtype)
                break
    return x


class TrainAugment(nn.Module):
    """uint8 batch -> augmented, normalised float batch of `size` x `size`."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        channels: int = 3,
        crop: str = "rrc",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        crop_padding: int = 4,
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        rand_augment: str | None = None,
        reprob: float = 0.0,
    ):
        super().__init__()
        import kornia.augmentation as K

        self.size, self.channels, self.crop, self.crop_padding = size, channels, crop, crop_padding
        self.hflip, self.reprob = hflip, reprob
        self.rrc = (
            K.RandomResizedCrop((size, size), scale=scale, ratio=ratio, resample="bicubic") if crop == "rrc" else None
        )
        self.color = None
        if rand_augment:  # DeiT: colour jitter is not used when RandAugment is on
            from kornia.augmentation.auto import RandAugment

            if channels != 3:
                raise ValueError("RandAugment needs 3-channel input")
            n, m = parse_rand_augment(rand_augment)
            self.color = RandAugment(n=n, m=m)
        elif color_jitter > 0 and channels == 3:
            self.color = K.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=1.0)
        self.normalize = Normalize(mean, std, channels)

    def forward(self, images: Tensor) -> Tensor:
        x = to_float(images, self.channels)
        if self.rrc is not None:
            x = self.rrc(x).clamp_(0, 1)
        else:
            x = resize_to(x, self.size)
            if self.crop == "pad" and self.crop_padding > 0:
                x = random_translate(x, self.crop_padding)
        if self.hflip > 0:
            flip = torch.rand(x.shape[0], device=x.device) < self.hflip
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.color is not None:
            x = self.color(x).clamp_(0, 1)
        x = self.normalize(x)
        if self.reprob > 0:
            x = random_erase(x, self.reprob)
        return x


class EvalPreprocess(nn.Module):
    """uint8 batch -> centre crop (or resize) to `size`, normalise."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3):
        super().__init__()
        self.size, self.channels = size, channels
        self.normalize = Normalize(mean, std, channels)

    def forward(self, images: Tensor) -> Tensor:
        return self.normalize(center_crop(to_float(images, self.channels), self.size))


def one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Soft targets: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    off = smoothing / num_classes
    return torch.full((len(labels), num_classes), off, device=labels.device).scatter_(
        1, labels[:, None], 1.0 - smoothing + off
    )


def cutmix_box(h: int, w: int, lam: float, grid: int = 1) -> tuple[int, int, int, int]:
    """A box of area about (1 - lam) h w at a uniform random centre, clipped; corners snapped to `grid`."""
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    if grid > 1:  # snapped to patch borders; the last (padded) patch of a side ends at the side
        top, bottom = min(round(top / grid) * grid, h), min(round(bottom / grid) * grid, h)
        left, right = min(round(left / grid) * grid, w), min(round(right / grid) * grid, w)
    return top, bottom, left, right


class Mixup:
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch, with label smoothing.

    Each batch is mixed with its reverse with probability `prob`; when both are enabled CutMix
    is chosen with probability `switch_prob`. lam ~ Beta(alpha, alpha); CutMix corrects lam to the
    area actually pasted. Returns images and soft targets; `patch_targets` (for the patch-mixing
    loss) gives each patch the target of the image it came from, with the box snapped to patches.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        smoothing: float = 0.1,
        patch_size: int = 1,
    ):
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.smoothing, self.patch_size = prob, switch_prob, smoothing, patch_size

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _beta(self, alpha: float) -> float:
        return float(torch.distributions.Beta(alpha, alpha).sample())

    def __call__(self, x: Tensor, labels: Tensor, with_patches: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        targets = one_hot(labels, self.num_classes, self.smoothing)
        b, _, h, w = x.shape
        # The model pads a side that is not a multiple of the patch: ceil(side / patch) patches.
        grid = (-(-h // self.patch_size), -(-w // self.patch_size))
        patch = targets[:, None, :].expand(b, grid[0] * grid[1], -1) if with_patches else None
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return x, targets, patch
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or torch.rand(()).item() < self.switch_prob)
        flipped = targets.flip(0)
        if not use_cutmix:
            lam = self._beta(self.mixup_alpha)
            x = x * lam + x.flip(0) * (1 - lam)
            mixed = targets * lam + flipped * (1 - lam)
            return x, mixed, mixed[:, None, :].expand_as(patch) if with_patches else None
        lam = self._beta(self.cutmix_alpha)
        top, bottom, left, right = cutmix_box(h, w, lam, self.patch_size if with_patches else 1)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
        mixed = targets * lam + flipped * (1 - lam)
        if with_patches:
            inside = torch.zeros(grid, dtype=torch.bool, device=x.device)
            p = self.patch_size
            inside[top // p : -(-bottom // p), left // p : -(-right // p)] = True
            patch = torch.where(inside.flatten()[None, :, None], flipped[:, None, :], targets[:, None, :])
        return x, mixed, patch
