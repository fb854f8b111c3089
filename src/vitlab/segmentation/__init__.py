"""Semantic segmentation: decoders (SETR, Segmenter, SegFormer) over any backbone's multi-scale features."""

from vitlab.segmentation.base import IGNORE_INDEX, SegmentationModel, SegmentationOutput, build_backbone, resize_logits

__all__ = ["IGNORE_INDEX", "SegmentationModel", "SegmentationOutput", "build_backbone", "resize_logits"]
