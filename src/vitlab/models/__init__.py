"""Model families; importing this package registers every named variant."""

from vitlab.models import vit  # noqa: F401
