"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, convnet, cswin, dat, pale, sasa, swin, vit  # noqa: F401
