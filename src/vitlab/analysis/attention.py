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


@torch.no_grad()
def attention_rollout(model: nn.Module, images: Tensor) -> Tensor:
    """How much each input patch feeds the classifier, by attention rollout (Abnar and Zuidema 2020): (B, H', W').

    Each block's attention, averaged over heads, is mixed with the identity for the residual
    connection (0.5 A + 0.5 I, rows renormalised) and the blocks' matrices are multiplied: entry
    (i, j) of the product is how much output token i draws on input token j through all layers.
    The classifier's tokens are the rows kept: the class token for `global_pool="token"`, every
    patch token (averaged) for "avg" and "flatten". Columns are the input patches, renormalised to
    sum to 1 per image.
    """
    if model.feature_format != "NLC":
        raise ValueError(
            f"{type(model).__name__} has no tokens to roll out: its features are a {model.feature_format} map"
        )
    model.eval()
    with capture_attention(model) as maps:
        model(images)
    recorded = [probs[0] for probs in maps.values() if probs]
    flow = None
    for probs in recorded:  # (B, heads, N, N), blocks in the order they ran
        mixed = 0.5 * probs.mean(dim=1) + 0.5 * torch.eye(probs.shape[-1], device=probs.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        flow = mixed if flow is None else mixed @ flow
    prefix = model.num_prefix_tokens
    rows = flow[:, :1] if model.global_pool == "token" else flow[:, prefix:]
    patches = rows[..., prefix:].mean(dim=1)
    patches = patches / patches.sum(dim=-1, keepdim=True)
    grid = [-(-side // patch) for side, patch in zip(images.shape[-2:], model.patch_size, strict=True)]
    return patches.reshape(-1, *grid)
