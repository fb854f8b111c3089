"""Inference of a segmentation model on whole images or sliding windows, with flip and multi-scale.

`whole`: the image goes through the model once; its logits (at the input's size) are resized to
the label's size. `slide` (mmsegmentation's `slide_inference`): crops of `crop` pixels every
`stride` pixels, the last row and column of crops shifted back to end at the image's border
(y2 = min(y1 + crop, H), y1 = max(y2 - crop, 0)); the logits of overlapping crops are summed and
divided by how many crops cover each pixel. An image smaller than the crop is not padded: the
crop is the image. The crops of a batch are stacked and run through the model `batch_size` at a
time, not one by one.

Test-time augmentation (`scales`, `flip`) follows mmseg's `aug_test`: each view's logits are
resized to the label's size (bilinear, with the model's `align_corners`), turned into
probabilities, flipped back where the view was flipped, and the probabilities averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.segmentation.base import resize_logits


def crop_boxes(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every sliding-window crop, in mmseg's order (rows of crops, top to bottom)."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    if min(h_crop, w_crop, h_stride, w_stride) < 1:
        raise ValueError(f"crop {crop} and stride {stride} must be positive")
    rows = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    cols = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    boxes = []
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * h_stride + h_crop, height), min(j * w_stride + w_crop, width)
            boxes.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return boxes


def slide_logits(
    model: nn.Module, images: Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int = 16
) -> Tensor:
    """Logits (B, classes, H, W) of `images` (B, C, H, W) from overlapping crops, averaged per pixel."""
    b, _, height, width = images.shape
    boxes = crop_boxes(height, width, crop, stride)
    crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])  # (crops x B, C, h, w)
    outputs = torch.cat([model(chunk) for chunk in crops.split(batch_size)])
    outputs = outputs.reshape(len(boxes), b, *outputs.shape[1:])
    total = images.new_zeros(b, outputs.shape[2], height, width, dtype=outputs.dtype)
    count = images.new_zeros(1, 1, height, width, dtype=outputs.dtype)
    for (y1, y2, x1, x2), logits in zip(boxes, outputs, strict=True):
        total[:, :, y1:y2, x1:x2] += logits
        count[:, :, y1:y2, x1:x2] += 1
    return total / count


def segment(
    model: nn.Module,
    images: Tensor,
    out_size: tuple[int, int],
    *,
    mode: str = "whole",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    batch_size: int = 16,
) -> Tensor:
    """Class probabilities (B, classes, *out_size) of normalised `images`, averaged over the views.

    `mode` "whole" or "slide" (needs `crop` and `stride`); `scales` resize the input by each ratio
    (bilinear) before inference; `flip` adds the horizontally flipped image of every scale.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (crop is None or stride is None):
        raise ValueError("sliding-window inference needs a crop size and a stride")
    align = bool(getattr(model, "align_corners", False))
    height, width = images.shape[-2:]
    total = None
    views = 0
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"test scales must be positive, got {scale}")
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = images
        if size != (height, width):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=align)
        for flipped in (False, True) if flip else (False,):
            view = x.flip(-1) if flipped else x
            logits = slide_logits(model, view, crop, stride, batch_size) if mode == "slide" else model(view)
            probs = resize_logits(logits.float(), out_size, align).softmax(dim=1)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
            views += 1
    return total / views
