"""Semantic-segmentation metrics over a whole dataset, as mmsegmentation computes them.

One confusion matrix (rows: the label, columns: the prediction) is summed over every pixel of
every image whose label is not the ignore index, and over every process (`torch.distributed`
sums the matrices, so the result does not depend on how images were split). The metrics come from
that matrix once, at the end, never as a mean of per-image values:

- IoU of class c = TP / (TP + FP + FN) = C[c, c] / (sum of row c + sum of column c - C[c, c]);
- Acc of class c = TP / (TP + FN) = C[c, c] / (sum of row c);
- aAcc = trace(C) / sum(C), the fraction of counted pixels labelled right;
- mIoU and mAcc are the means over the classes whose value is defined: a class with no labelled
  and no predicted pixel has IoU 0/0 = NaN and is left out (mmseg's `nanmean`); a class predicted
  somewhere but never labelled has IoU 0 (counted) and Acc NaN (left out).

Values are returned as percentages (mmseg reports `round(100 x, 2)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vitlab.segmentation.base import IGNORE_INDEX


def confusion_matrix(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(num_classes, num_classes) int64 counts of (label, prediction) pairs over the pixels not ignored."""
    if pred.shape != label.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(label.shape)} differ in shape")
    keep = label != ignore_index
    label, pred = label[keep].long(), pred[keep].long()
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        raise ValueError(f"labels must be 0..{num_classes - 1} or {ignore_index}, found {int(label.max())}")
    pairs = torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return pairs.reshape(num_classes, num_classes)


@dataclass
class SegmentationScores:
    """The metrics of one confusion matrix, in percent; per-class lists hold NaN for undefined classes."""

    miou: float
    macc: float
    aacc: float
    iou: list[float]
    acc: list[float]
    pixels: int  # pixels counted (not ignored)

    def as_dict(self) -> dict[str, float]:
        return {"miou": self.miou, "macc": self.macc, "aacc": self.aacc}


def _nanmean(values: Tensor) -> float:
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else math.nan


def scores(matrix: Tensor) -> SegmentationScores:
    """mIoU, mAcc, aAcc and the per-class IoU / Acc of a summed confusion matrix (see the module docstring)."""
    m = matrix.double()
    tp = m.diagonal()
    labelled, predicted = m.sum(dim=1), m.sum(dim=0)
    union = labelled + predicted - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan)) * 100
    acc = torch.where(labelled > 0, tp / labelled.clamp_min(1), torch.full_like(tp, math.nan)) * 100
    total = m.sum()
    aacc = float(tp.sum() / total * 100) if total > 0 else math.nan
    return SegmentationScores(_nanmean(iou), _nanmean(acc), aacc, iou.tolist(), acc.tolist(), int(total))


def per_class_table(result: SegmentationScores, classes: list[str]) -> str:
    """The per-class table `vitlab eval` prints (IoU and Acc in percent, `nan` for classes never seen)."""
    width = max([len("class"), *(len(c) for c in classes)])
    lines = [f"{'class'.ljust(width)}  {'IoU':>6}  {'Acc':>6}"]
    for name, iou, acc in zip(classes, result.iou, result.acc, strict=True):
        lines.append(f"{name.ljust(width)}  {iou:6.2f}  {acc:6.2f}")
    lines.append(f"mIoU {result.miou:.2f}  mAcc {result.macc:.2f}  aAcc {result.aacc:.2f}  ({result.pixels} pixels)")
    return "\n".join(lines)
