"""The contract every vitlab image model keeps, written once: models inherit it from `Backbone`.

A family implements four things: `embed`-then-blocks in `forward_features`, the feature maps in
`iter_features`, its blocks in depth order in `blocks_in_depth_order`, and its classifier(s) through
`add_classifier`. Everything tools rely on follows from those: logits, classifier reset, gradient
checkpointing, multi-scale features, the groups of layer-wise learning-rate decay, input checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from vitlab.layers.blocks import run_blocks
from vitlab.layers.embed import to_2tuple
from vitlab.layers.heads import linear_classifier, pool_features

_Model = TypeVar("_Model", bound="SavesPretrained")


class SavesPretrained:
    """`save_pretrained(dir)` / `from_pretrained(dir)`, HF's directory convention, for every vitlab model.

    The directory holds `model.safetensors` (the state dict, with the model's name, constructor
    overrides and class names in its header) and `config.json` (the same, with the preprocessing);
    `vitlab.load_model(dir)` and `create_model(name, pretrained=dir)` read it too (`vitlab.convert`).
    """

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `directory`/model.safetensors and config.json (the directory is created; files replaced)."""
        from vitlab.convert import save_pretrained

        return save_pretrained(self, directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls: type[_Model], directory: str | Path, **overrides: Any) -> _Model:
        """The model saved in `directory` (by `save_pretrained` or `vitlab convert`), which must be a `cls`;
        `overrides` replace its constructor arguments, as in `create_model`."""
        from vitlab.convert import from_pretrained

        return from_pretrained(directory, cls, **overrides)  # type: ignore[return-value]


class Backbone(SavesPretrained, nn.Module):
    """Base of every image model.

    `feature_format` states what `forward_features` returns: "NLC" tokens (ViT), an "NHWC" map
    (Swin, CSWin, Pale) or an "NCHW" map (ResNets). `img_size` is the input size the parameter
    shapes are made for (position tables, relative-position spans); it never changes the module
    tree, and every model runs at other sizes too.
    """

    feature_format: ClassVar[str] = "NCHW"
    min_input_size: ClassVar[int] = 1  # the smallest side the model can take
    # The smallest (height, width) one torch.export program with symbolic sides serves, where that is more
    # than `min_input_size` (torch specialises sizes of 1: a side the model maps to 1 needs its own program).
    symbolic_min_size: tuple[int, int] | None = None
    has_patch_tokens: ClassVar[bool] = False  # forward_patch_tokens (patch-diversification losses)
    global_pool: str = "avg"
    num_prefix_tokens: int = 0
    patch_size: tuple[int, int] | None = None  # side of the tokens' grid cells, for token models
    input_conv: str  # the state-dict key of the convolution that sees the image

    def __init__(self, in_chans: int, num_classes: int, img_size: int | Sequence[int] | None = None):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.img_size = None if img_size is None else to_2tuple(img_size)
        self.grad_checkpointing = False
        self._classifier_widths: dict[str, int] = {}

    # The classifier(s).
    def add_classifier(self, path: str, in_features: int) -> None:
        """Install the linear classifier at `path` (e.g. "head", "head.fc") for `num_classes` classes."""
        self._classifier_widths[path] = in_features
        self._set_submodule(path, linear_classifier(in_features, self.num_classes))

    @property
    def classifier_keys(self) -> tuple[str, ...]:
        """State-dict prefixes of the classifiers, which fine-tuning on a new label set re-initialises."""
        return tuple(self._classifier_widths)

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_keys[0])

    def reset_classifier(self, num_classes: int) -> None:
        """New classifier(s) for `num_classes` classes (0: the model returns pooled features)."""
        self.num_classes = num_classes
        reference = next(self.parameters(), None)
        for path, width in self._classifier_widths.items():
            module = linear_classifier(width, num_classes)
            if reference is not None and reference.device.type != "meta":
                module = module.to(device=reference.device, dtype=reference.dtype)
            self._set_submodule(path, module)

    def _set_submodule(self, path: str, module: nn.Module) -> None:
        parent, _, name = path.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, name, module)

    # The forward pass.
    def check_input(self, x: Tensor) -> None:
        """The one check of an image batch: (batch, in_chans, height, width), sides >= min_input_size."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_size:
            side = self.min_input_size
            raise ValueError(
                f"{type(self).__name__} needs images of at least {side}x{side} pixels, got {x.shape[-2]}x{x.shape[-1]}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """The final tokens or map, normalised, in `feature_format`."""
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Logits from `forward_features`' output: pool (`global_pool`), dropout, classify."""
        x = self.head_drop(pool_features(x, self.global_pool, self.feature_format, self.num_prefix_tokens))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def run_blocks(self, blocks: Sequence[nn.Module], x: Tensor) -> Tensor:
        """Apply blocks in order, checkpointed when `set_grad_checkpointing` is on."""
        return run_blocks(blocks, x, self.grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def forward_patch_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, first-layer patch tokens, last-layer patch tokens), for the patch-diversification losses."""
        raise TypeError(f"{type(self).__name__} has no patch tokens (its features are a {self.feature_format} map)")

    # Multi-scale features.
    feature_info: list[dict]
    default_out_indices: tuple[int, ...]

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        """The maps described by `feature_info`, in order, as NCHW tensors."""
        raise NotImplementedError

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """The NCHW maps of the `feature_info` levels in `indices`, in that order; stops at the deepest."""
        levels = len(self.feature_info)
        resolved = [i % levels if -levels <= i < levels else None for i in indices]
        if None in resolved or not resolved:
            raise ValueError(f"feature indices {tuple(indices)} are out of range: {type(self).__name__} has {levels}")
        maps: dict[int, Tensor] = {}
        for level, fmap in enumerate(self.iter_features(x)):
            maps[level] = fmap
            if level == max(resolved):
                break
        return [maps[i] for i in resolved]

    # What training asks of a model.
    def blocks_in_depth_order(self) -> list[nn.Module]:
        """The model's blocks (the units of depth), in the order the forward pass runs them."""
        raise NotImplementedError

    def block_order(self) -> list[list[str]]:
        """Parameter names grouped by depth: [embedding], [block 1], ..., [block L], [final norm, head].

        Every parameter is in exactly one group. Parameters outside the blocks go with the next
        block that runs after them (a patch-merging layer with the first block of its stage),
        those before the first block with the embedding and those after the last with the head.
        Layer-wise learning-rate decay scales group g by decay^(L + 1 - g).
        """
        owner = {}
        for depth, block in enumerate(self.blocks_in_depth_order(), start=1):
            for param in block.parameters():
                if id(param) in owner:
                    raise ValueError(f"{type(self).__name__}: a parameter belongs to two blocks")
                owner[id(param)] = depth
        groups: list[list[str]] = [[] for _ in range(len(self.blocks_in_depth_order()) + 2)]
        pending: list[str] = []  # parameters waiting for the next block
        for name, param in self.named_parameters():
            depth = owner.get(id(param))
            if depth is None:
                pending.append(name)
                continue
            groups[depth if any(groups[1:]) else 0] += pending
            groups[depth].append(name)
            pending = []
        groups[-1] += pending
        return groups

    @property
    def pretrained_cfg(self) -> dict | None:
        """What the registry says of this variant (timm's name for it): input size, normalisation, weights."""
        entry = getattr(self, "entry", None)
        if entry is None:
            return None
        pre = entry.preprocess
        return dict(
            architecture=entry.name, task=entry.task, input_size=pre.input_size, mean=pre.mean, std=pre.std,
            crop_pct=pre.crop_pct, interpolation=pre.interpolation, num_classes=entry.num_classes, url=entry.url,
        )  # fmt: skip

    def no_weight_decay(self) -> set[str]:
        """Parameter names trained without weight decay besides norms and biases (tables, tokens)."""
        return set()

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fit a checkpoint made for another input size or window to this model (before the strict load)."""
        return state_dict

    @torch.no_grad()
    def _init_linear_layers(self) -> None:
        """Truncated-normal weights (std 0.02) and zero biases for every linear layer (ViT, Swin, CSWin)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
