"""Every registered image classifier with attention gives maps in its geometry (tiny configuration, odd size).

A family whose attention layer has no geometry fails here, naming the class and `register_geometry`.
"""

import pytest
import torch

import vitlab
from vitlab.analysis import NoAttentionError, record_layers
from vitlab.registry import get_entry, list_models

CLASSIFIERS = [n for n in list_models() if get_entry(n).task == "image-classification"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_maps_of_every_attention_call_sum_to_one(name):
    torch.manual_seed(0)
    model = vitlab.create_model(name, **get_entry(name).tiny).eval()
    try:
        layers = record_layers(model, torch.randn(1, model.in_chans, 56, 72))
    except NoAttentionError:
        assert not any(type(m).__name__.endswith("Attention") for m in model.modules())
        return
    assert layers
    for layer in layers:
        assert layer.probs.shape[-2:] == (layer.queries.count, layer.keys.count)
        torch.testing.assert_close(layer.probs.sum(-1), torch.ones(layer.probs.shape[:-1]), atol=1e-4, rtol=0)
    assert any(layer.keys.spatial for layer in layers)
