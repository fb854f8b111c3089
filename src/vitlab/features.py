"""Multi-scale feature maps from any backbone, for dense heads (FPN, UPerNet, SETR, SegFormer)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class FeatureExtractor(nn.Module):
    """Wrap a backbone so that `forward` returns NCHW feature maps.

    Every vitlab backbone provides `feature_info`, a list of dicts (`num_chs`, `reduction`,
    `module`) describing the maps it can return, and `forward_intermediates(x, indices)`. Here
    `out_indices` picks entries of that list (negative indices count from the end); by default
    a backbone's `default_out_indices`. `channels` and `reductions` describe the outputs.
    The classifier head is not used; its parameters stay in the wrapped model so that
    checkpoints still load into `self.model`.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None):
        super().__init__()
        if not hasattr(model, "forward_intermediates"):
            raise TypeError(f"{type(model).__name__} does not provide multi-scale features")
        self.model = model
        info = model.feature_info
        if out_indices is None:
            out_indices = model.default_out_indices
        resolved = []
        for index in out_indices:
            if not -len(info) <= index < len(info):
                raise ValueError(
                    f"out_indices entry {index} is out of range: {type(model).__name__} has {len(info)} feature levels"
                )
            resolved.append(index % len(info))
        self.out_indices = tuple(resolved)
        self.feature_info = [info[i] for i in self.out_indices]

    @property
    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(x, self.out_indices)
