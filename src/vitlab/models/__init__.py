"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, ceit, convit, convnet, cswin, dat, hornet, pale, psvit, pvt, sasa, swin, t2t, vit, vt  # noqa: F401

# Segmentation and sequence-to-sequence variants register after the backbones they build on, so that
# list_models sees every task.
# isort: split
from vitlab import seq2seq  # noqa: F401
from vitlab.segmentation import segformer, segmenter, setr  # noqa: F401
