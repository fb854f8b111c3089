"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, ceit, convit, convnet, cswin, dat, hornet, pale, psvit, pvt, sasa, swin, t2t, vit, vt  # noqa: F401

# Segmentation variants register after the backbones they build on, so that list_models sees every task.
from vitlab.segmentation import segformer, segmenter, setr  # noqa: E402,F401
