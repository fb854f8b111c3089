"""Classifier heads: pooling the final tokens or map, the linear classifier, DeiT's two-head rule."""

from __future__ import annotations

from torch import Tensor, nn

POOLS = ("avg", "token", "flatten")
FEATURE_FORMATS = ("NLC", "NHWC", "NCHW")


def linear_classifier(in_features: int, num_classes: int) -> nn.Module:
    """A linear classifier (truncated-normal weights, std 0.02, zero bias), or Identity for 0 classes.

    With `num_classes=0` a model returns its pooled features ("pre-logits") instead of logits.
    """
    if not num_classes:
        return nn.Identity()
    fc = nn.Linear(in_features, num_classes)
    nn.init.trunc_normal_(fc.weight, std=0.02)
    nn.init.zeros_(fc.bias)
    return fc


def pool_features(x: Tensor, pool: str, feature_format: str, num_prefix_tokens: int = 0) -> Tensor:
    """(batch, features) from the final tokens or map.

    "avg" averages the patch tokens (NLC, after the `num_prefix_tokens` class/distillation tokens) or
    every position of a map (NHWC, NCHW); "token" takes the first token (the class token);
    "flatten" concatenates the patch tokens in raster order, so the classifier sees where each
    feature is.
    """
    if feature_format == "NLC":
        if pool == "token":
            return x[:, 0]
        tokens = x[:, num_prefix_tokens:]
        return tokens.mean(dim=1) if pool == "avg" else tokens.flatten(1)
    if pool != "avg":
        raise ValueError(f"a {feature_format} feature map can only be pooled by 'avg', not {pool!r}")
    return x.mean(dim=(1, 2)) if feature_format == "NHWC" else x.mean(dim=(2, 3))


class ClassifierHead(nn.Module):
    """Average pooling of a map, dropout, then the classifier `fc` (timm's `head.fc` layout).

    The model installs `fc` (see `Backbone.add_classifier`), so that resetting it works the same
    way for every head.
    """

    def __init__(self, feature_format: str = "NHWC", drop_rate: float = 0.0):
        super().__init__()
        self.feature_format = feature_format
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(pool_features(x, "avg", self.feature_format))
        return x if pre_logits else self.fc(x)


def distilled_logits(class_logits: Tensor, dist_logits: Tensor, training: bool) -> Tensor | tuple[Tensor, Tensor]:
    """DeiT's two heads (Touvron et al. 2021, section 4): both while training, their average at inference.

    The training loss needs the class head (against the labels) and the distillation head
    (against the teacher) separately; at test time the paper adds the two heads' softmax-free
    outputs, which is the average of the logits up to a factor.
    """
    return (class_logits, dist_logits) if training else (class_logits + dist_logits) / 2
