"""Reading attention maps out of a model (probabilities recorded by `capture_attention`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitlab.layers.attention import capture_attention


@torch.no_grad()
def class_token_attention(model: nn.Module, images: Tensor, layer: int = -1) -> Tensor:
    """The class token's attention over the patches, averaged over heads: (B, H', W') for one block.

    For token models with a class token (`global_pool="token"` ViTs, DeiT); `layer` indexes the
    blocks (the last by default). The patch grid is the input's, ceil(side / patch).
    """
    if model.feature_format != "NLC":
        raise ValueError(f"{type(model).__name__} has no class token: its features are a {model.feature_format} map")
    model.eval()
    with capture_attention(model) as maps:
        model(images)
    recorded = [probs for probs in maps.values() if probs]
    probs = recorded[layer][0]  # (B, heads, tokens, tokens)
    grid = [-(-side // patch) for side, patch in zip(images.shape[-2:], model.patch_size, strict=True)]
    return probs[:, :, 0, model.num_prefix_tokens :].mean(dim=1).reshape(-1, *grid)
