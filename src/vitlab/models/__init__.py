"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, convnet, cswin, pale, sasa, swin, t2t, vit  # noqa: F401
