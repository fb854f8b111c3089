"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, ceit, convit, convnet, cswin, dat, hornet, pale, psvit, pvt, sasa, swin, t2t, vit, vt  # noqa: F401

# isort: split
from vitlab import seq2seq  # noqa: F401  (the sequence-to-sequence variants; their image encoder is vit)
