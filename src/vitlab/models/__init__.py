"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, ceit, convit, convnet, cswin, dat, hornet, pale, psvit, pvt, sasa, swin, t2t, vit, vt  # noqa: F401

# Segmentation variants register with the backbones they build on (after them).
from vitlab.segmentation import segformer  # noqa: E402, F401
