"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, sasa, vit  # noqa: F401
