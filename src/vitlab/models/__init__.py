"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, ceit, convit, convnet, cswin, pale, sasa, swin, vit  # noqa: F401
