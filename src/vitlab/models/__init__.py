"""Model families; importing this package registers every named variant."""

from vitlab.models import swin, vit  # noqa: F401
