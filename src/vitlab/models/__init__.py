"""Model families; importing this package registers every named variant."""

from vitlab.models import convnet, vit, vitc  # noqa: F401
