"""Model families; importing this package registers every named variant."""

from vitlab.models import axial, vit  # noqa: F401
