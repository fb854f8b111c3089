"""Shared test utilities."""

from collections.abc import Callable

import torch


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the parity measure used throughout vitlab."""
    diff = (actual.double() - expected.double()).abs().max()
    return (diff / expected.double().abs().max().clamp_min(1e-12)).item()


def count_saved_tensors(fn: Callable[[], object]) -> tuple[object, int]:
    """`fn()`'s result and how many tensors autograd saved for the backward pass while it ran."""
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, saved


def assert_same_weights(expected: dict, actual: dict, embed_dim: int, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Two trainings' weights agree, except for the attention's key bias.

    The key bias adds the same score to a query's every key, which softmax ignores: its exact
    gradient is 0, so its value is rounding noise that Adam's normalisation blows up to ~lr.
    """
    assert expected.keys() == actual.keys()
    for key in expected:
        a, b = expected[key], actual[key]
        if key.endswith("attn.qkv.bias"):
            a, b = torch.cat([a[:embed_dim], a[2 * embed_dim :]]), torch.cat([b[:embed_dim], b[2 * embed_dim :]])
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=key)
