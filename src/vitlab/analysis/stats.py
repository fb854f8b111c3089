"""Statistics of attention and of token representations, per layer and head.

- Mean attention distance (Dosovitskiy et al. 2021, fig. 7): for each query, the image-space
  distance to each key weighted by its attention, averaged over queries; in pixels of the input.
  Queries and keys without a place in the image (class tokens, visual tokens) are left out, and
  a query's weights are renormalised over the keys that have one (our choice: the class token's
  share says nothing about distance). Queries on padding past the image edge are left out.
- Attention entropy per head: -sum_k p log p over all keys of a query (nats), averaged over queries.
- Patch-wise absolute cosine similarity (Gong et al. 2021, "Vision transformers with patch
  diversification", eq. 2): the mean of |cos(h_i, h_j)| over pairs i != j of patch tokens, per
  block: near 1 when the patches have become alike (over-smoothing).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitlab.analysis.geometry import LayerAttention


def _inside(positions: Tensor, image_size: tuple[int, int]) -> Tensor:
    return (positions[..., 0] < image_size[1]) & (positions[..., 1] < image_size[0])


def mean_attention_distance(layer: LayerAttention) -> Tensor | None:
    """(heads,) mean attention distance in pixels, averaged over the batch; None without placed queries and keys."""
    queries, keys = layer.queries, layer.keys
    if not (queries.spatial and keys.spatial):
        return None
    size = layer.image_size
    q_pos = queries.positions(size)  # (B or 1, 1 or heads, Nq, 2)
    k_pos = keys.positions(size)
    weights = layer.probs[:, :, queries.prefix :, keys.prefix :].double()
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    distance = (q_pos.unsqueeze(-2) - k_pos.unsqueeze(-3)).norm(dim=-1)  # (., ., Nq, Nk)
    per_query = (weights * distance).sum(-1)  # (B, heads, Nq)
    inside = _inside(q_pos, size).expand_as(per_query)
    return (per_query * inside).sum((0, 2)) / inside.sum((0, 2))


def attention_entropy(layer: LayerAttention) -> Tensor:
    """(heads,) mean entropy in nats of the queries' attention (placed queries on padding left out)."""
    probs = layer.probs.double()
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # (B, heads, Nq)
    queries = layer.queries
    if queries.spatial:
        inside = torch.ones_like(entropy, dtype=torch.bool)
        inside[:, :, queries.prefix :] = _inside(queries.positions(layer.image_size), layer.image_size)
        return (entropy * inside).sum((0, 2)) / inside.sum((0, 2))
    return entropy.mean((0, 2))


def patch_cosine_similarity(tokens: Tensor) -> Tensor:
    """(batch,) mean |cos| over pairs of distinct tokens of (batch, n, C) patch tokens."""
    unit = nn.functional.normalize(tokens.double(), dim=-1)
    gram = (unit @ unit.transpose(-1, -2)).abs()
    n = tokens.shape[1]
    return (gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


def block_patch_tokens(model: nn.Module, output) -> Tensor | None:
    """A block's output as (batch, n, C) patch tokens (prefix tokens dropped), or None if it is not a map of tokens.

    3-d outputs are tokens (the model's `num_prefix_tokens` first); 4-d outputs are maps, NCHW for
    models whose features are NCHW, NHWC otherwise (the pyramids' blocks, ConViT's GPSA blocks).
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        return None
    if output.ndim == 3:
        prefix = getattr(model, "num_prefix_tokens", 0)
        return output[:, prefix:] if output.shape[1] > prefix + 1 else output
    if output.ndim == 4:
        if getattr(model, "feature_format", "NCHW") == "NCHW":
            output = output.permute(0, 2, 3, 1)
        return output.flatten(1, 2)
    return None


@torch.no_grad()
def similarity_per_block(model: nn.Module, images: Tensor) -> list[float]:
    """Patch-wise absolute cosine similarity after every block (`blocks_in_depth_order`), averaged over images."""
    outputs: list[Tensor | None] = []
    hooks = [
        block.register_forward_hook(lambda _m, _a, out: outputs.append(block_patch_tokens(model, out)))
        for block in model.blocks_in_depth_order()
    ]
    try:
        model.eval()
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [
        float(patch_cosine_similarity(t).mean()) if t is not None and t.shape[1] > 1 else float("nan") for t in outputs
    ]
