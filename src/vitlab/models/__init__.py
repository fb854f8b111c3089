"""Model families; importing this package registers every named variant."""

from vitlab.models import cswin, pale, vit  # noqa: F401
