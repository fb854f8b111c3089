"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, convnet, cswin, pale, sasa, swin, vit, vt  # noqa: F401
