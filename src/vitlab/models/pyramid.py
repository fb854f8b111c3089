"""The four-stage pyramid that hierarchical backbones share: stem, stages, final norm, pooled classifier.

A stem turns the image into a channels-last map at stride 4; each stage optionally downsamples
(stride 2, more channels) and runs its blocks; the last map is normalised, averaged and
classified. The stage outputs, at strides 4, 8, 16 and 32, are the features dense heads consume.
Families fill in their own stem, downsampling layer and block (Swin: patch merging and shifted
windows; CSWin: strided convolutions and cross-shaped windows; Pale: the same with pales), and
keep their checkpoints' parameter names: a family says where its parts are in `stage_parts()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from vitlab.models.base import Backbone


class Stage(nn.Module):
    """One stage: an optional downsampling layer, then blocks (`downsample`, `blocks` as in timm)."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)


class Pyramid(Backbone):
    """Base of the hierarchical backbones; maps between stages are channels-last (B, H, W, C)."""

    feature_format = "NHWC"

    def embed(self, x: Tensor) -> Tensor:
        """The checked image through the stem: a (B, H/4, W/4, C) map."""
        raise NotImplementedError

    def stage_parts(self) -> list[tuple[nn.Module | None, Sequence[nn.Module]]]:
        """(downsampling layer or None, blocks) of every stage, in order."""
        raise NotImplementedError

    def set_feature_info(self, dims: Sequence[int], module_names: Sequence[str], first_stride: int = 4) -> None:
        self.feature_info = [
            dict(num_chs=d, reduction=first_stride * 2**i, module=m)
            for i, (d, m) in enumerate(zip(dims, module_names, strict=True))
        ]
        self.default_out_indices = tuple(range(len(dims)))
        self.num_features = dims[-1]

    def iter_stages(self, x: Tensor) -> Iterator[Tensor]:
        """The (B, H, W, C) output of every stage."""
        x = self.embed(x)
        for downsample, blocks in self.stage_parts():
            if downsample is not None:
                x = downsample(x)
            x = self.run_blocks(blocks, x)
            yield x

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        """Stage outputs as NCHW maps (before the final norm, which belongs to the classifier path)."""
        for fmap in self.iter_stages(x):
            yield fmap.permute(0, 3, 1, 2)

    def forward_features(self, x: Tensor) -> Tensor:
        for fmap in self.iter_stages(x):
            x = fmap
        return self.norm(x)

    def blocks_in_depth_order(self) -> list[nn.Module]:
        return [block for _, blocks in self.stage_parts() for block in blocks]
