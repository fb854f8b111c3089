"""Attention distance, entropy and patch similarity on hand-built maps whose values are known."""

import math

import pytest
import torch

from vitlab.analysis.geometry import LayerAttention, Tokens
from vitlab.analysis.stats import attention_entropy, mean_attention_distance, patch_cosine_similarity

H, W = 3, 4  # a 3 x 4 grid of 10-pixel cells over a 30 x 40 image
IMAGE = (30, 40)


def grid_layer(rows_to_keys, prefix=0, cls_share=0.0):
    """One head per entry of `rows_to_keys`: a function (r, c) -> the cell (r', c') the query attends to."""
    n = H * W
    probs = torch.zeros(1, len(rows_to_keys), prefix + n, prefix + n, dtype=torch.float64)
    for h, target in enumerate(rows_to_keys):
        if prefix:
            probs[0, h, 0, 0] = 1.0  # the class token's own row: not a placed query
        for r in range(H):
            for c in range(W):
                tr, tc = target(r, c)
                probs[0, h, prefix + r * W + c, prefix + tr * W + tc] = 1.0 - cls_share
                probs[0, h, prefix + r * W + c, 0] += cls_share
    tokens = Tokens(prefix + n, prefix=prefix, grid=(H, W))
    return LayerAttention("hand", "global", probs, tokens, tokens, IMAGE)


def test_distance_is_zero_for_self_attention_and_the_cell_pitch_for_neighbours():
    layer = grid_layer([lambda r, c: (r, c), lambda r, c: (r, (c + 1) % W), lambda r, c: ((r + 1) % H, c)])
    # right neighbour: 10 px for 3 columns, 30 px back from the last column: (3 * 10 + 30) / 4 = 15
    # the row below: 10 px for 2 rows, 20 px back from the last row: (2 * 10 + 20) / 3 = 40 / 3
    torch.testing.assert_close(mean_attention_distance(layer), torch.tensor([0.0, 15.0, 40 / 3], dtype=torch.float64))


def test_class_token_share_is_left_out_and_the_rest_renormalised():
    layer = grid_layer([lambda r, c: (r, (c + 1) % W)], prefix=1, cls_share=0.75)
    torch.testing.assert_close(mean_attention_distance(layer), torch.tensor([15.0], dtype=torch.float64))


def test_diagonal_distance_and_a_split_query():
    # half on itself, half on the cell one down and one right (clamped queries excluded by choosing r<2, c<3 only)
    n = H * W
    probs = torch.zeros(1, 1, n, n, dtype=torch.float64)
    for q in range(n):
        probs[0, 0, q, q] = 1.0
    probs[0, 0, 0, 0] = 0.5
    probs[0, 0, 0, 1 * W + 1] = 0.5
    tokens = Tokens(n, grid=(H, W))
    layer = LayerAttention("hand", "global", probs, tokens, tokens, IMAGE)
    # only query 0 moves: 0.5 * 10 * sqrt(2) px, averaged over 12 queries
    expected = 0.5 * 10 * math.sqrt(2) / n
    torch.testing.assert_close(mean_attention_distance(layer), torch.tensor([expected], dtype=torch.float64))


def test_sampled_keys_distance_in_pixels():
    queries = Tokens(1, grid=(1, 1))  # one query at the centre (20, 15) of a 30 x 40 image
    points = torch.tensor([[[[20.0, 15.0], [23.0, 19.0]]]], dtype=torch.float64)  # (1, 1, 2, 2): 0 and 5 px away
    keys = Tokens(2, points=points)
    probs = torch.tensor([[[[0.2, 0.8]]]], dtype=torch.float64)
    layer = LayerAttention("hand", "deformable", probs, queries, keys, IMAGE)
    torch.testing.assert_close(mean_attention_distance(layer), torch.tensor([4.0], dtype=torch.float64))


def test_no_distance_without_placed_tokens():
    tokens = Tokens(3, label="visual token")
    layer = LayerAttention("hand", "visual-tokens", torch.full((1, 1, 3, 3), 1 / 3), tokens, tokens, IMAGE)
    assert mean_attention_distance(layer) is None


@pytest.mark.parametrize("k", [1, 4, 12])
def test_entropy_of_uniform_attention_over_k_keys_is_log_k(k):
    n = H * W
    probs = torch.zeros(2, 1, n, n, dtype=torch.float64)
    probs[..., :k] = 1.0 / k
    tokens = Tokens(n, grid=(H, W))
    layer = LayerAttention("hand", "global", probs, tokens, tokens, IMAGE)
    torch.testing.assert_close(attention_entropy(layer), torch.tensor([math.log(k)], dtype=torch.float64))


def test_patch_cosine_similarity():
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    alike = torch.stack([e1, 2 * e1, -e1])[None]
    orthogonal = torch.stack([e1, e2, torch.tensor([0.0, 0.0, 3.0])])[None]
    mixed = torch.stack([e1, e2, (e1 + e2)])[None]  # |cos|: 0, 1/sqrt(2), 1/sqrt(2)
    values = patch_cosine_similarity(torch.cat([alike, orthogonal, mixed]))
    expected = torch.tensor([1.0, 0.0, 2 / math.sqrt(2) / 3], dtype=torch.float64)
    torch.testing.assert_close(values, expected)
