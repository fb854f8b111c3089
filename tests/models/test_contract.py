"""The contract every registered model keeps, checked on each one through its `tiny=` configuration.

A new family gets all of these checks by registering its variants. Each check compares against
something computed another way: a batch against its samples one by one, a checkpointed pass against
a plain one, the blocks in `block_order()` against the order in which forward hooks see them run.
"""

import copy
import math

import pytest
import torch
from torch import nn

import vitlab
from tests.helpers import count_saved_tensors
from vitlab.layers.attention import AttentionLayer
from vitlab.registry import TASKS, get_entry
from vitlab.train.optim import param_groups

NAMES = vitlab.list_models(task="image-classification")
CLASSES = 5
SIZES = [(64, 64), (37, 53)]  # sides that divide every stride, and sides that divide none


def tiny(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return vitlab.create_model(name, num_classes=CLASSES, **{**get_entry(name).tiny, **overrides})


def images(model: nn.Module, size=(64, 64), batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.in_chans, *size, generator=torch.Generator().manual_seed(1))


def test_every_variant_is_registered_with_a_task_and_a_tiny_configuration():
    assert len(NAMES) >= 40
    for name in vitlab.list_models():
        entry = get_entry(name)
        assert entry.task in TASKS and isinstance(entry.tiny, dict)


@pytest.mark.parametrize("name", NAMES)
def test_any_size_runs_and_a_batch_is_its_samples(name):
    model = tiny(name).eval()
    for size in SIZES:
        x = images(model, size, batch=3)
        with torch.no_grad():
            batch = model(x)
            alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
            again = model(x)
        assert batch.shape == (3, CLASSES) and torch.isfinite(batch).all()
        torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)  # no sample sees another in eval
        assert torch.equal(batch, again)  # deterministic evaluation


@pytest.mark.parametrize("name", NAMES)
def test_feature_format_is_what_forward_features_returns(name):
    model = tiny(name).eval()
    with torch.no_grad():
        features = model.forward_features(images(model))
        logits = model.forward_head(features)
        pooled = model.forward_head(features, pre_logits=True)
    layout = {"NLC": 3, "NHWC": 4, "NCHW": 4}[model.feature_format]
    assert features.ndim == layout
    channels = features.shape[1] if model.feature_format == "NCHW" else features.shape[-1]
    assert pooled.shape[1] == model.num_features and channels == model.num_features
    if len(model.classifier_keys) == 1:  # (DeiT's two heads average their logits instead)
        torch.testing.assert_close(logits, model.get_classifier()(pooled))


@pytest.mark.parametrize("name", NAMES)
def test_features_only_gives_nchw_maps_at_the_stated_channels_and_strides(name):
    extractor = vitlab.create_model(name, features_only=True, **get_entry(name).tiny).eval()
    for height, width in SIZES:
        with torch.no_grad():
            maps = extractor(images(extractor.model, (height, width)))
        assert len(maps) == len(extractor.out_indices)
        for fmap, channels, stride in zip(maps, extractor.channels, extractor.reductions, strict=True):
            assert fmap.shape[:2] == (2, channels)
            for side, size in zip(fmap.shape[-2:], (height, width), strict=True):
                assert side in (math.floor(size / stride), math.ceil(size / stride)), (fmap.shape, stride)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_gives_the_same_gradients_and_buffers_and_stores_less(name):
    plain = tiny(name).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    x = images(plain)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(3)  # the same dropout and drop-path draws in both runs
        out, saved = count_saved_tensors(lambda model=model: model(x))
        out = out[0] + out[1] if isinstance(out, tuple) else out
        out.square().sum().backward()
        results.append((out.detach(), saved))
    (plain_out, plain_saved), (ckpt_out, ckpt_saved) = results
    torch.testing.assert_close(ckpt_out, plain_out)
    assert ckpt_saved < plain_saved
    ckpt_params = dict(checkpointed.named_parameters())
    for pname, param in plain.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(ckpt_params[pname].grad, param.grad, rtol=1e-4, atol=1e-6, msg=pname)
    ckpt_buffers = dict(checkpointed.named_buffers())
    for bname, buffer in plain.named_buffers():  # BatchNorm counts each batch once, checkpointed or not
        torch.testing.assert_close(ckpt_buffers[bname], buffer, msg=bname)


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier(name):
    model = tiny(name).eval()
    x = images(model)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), features)  # no classifier: the pooled features
    keys = model.classifier_keys
    assert keys and all(any(k.startswith(p) for k in tiny(name).state_dict()) for p in keys)


@pytest.mark.parametrize("name", NAMES)
def test_capture_attention_gives_probabilities_and_changes_nothing(name):
    model = tiny(name).eval()
    x = images(model, SIZES[1])
    layers = [n for n, m in model.named_modules() if isinstance(m, AttentionLayer)]
    if not layers:
        with pytest.raises(ValueError, match="no attention layers"), vitlab.capture_attention(model):
            pass
        return
    with torch.no_grad():
        expected = model(x)
        with vitlab.capture_attention(model) as maps:
            actual = model(x)
    assert torch.equal(actual, expected)
    assert set(maps) == set(layers) and all(maps[n] for n in layers)
    for probs in (p for ps in maps.values() for p in ps):
        assert (probs >= 0).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


@pytest.mark.parametrize("name", NAMES)
def test_float64(name):
    model = tiny(name).eval()
    x = images(model)
    with torch.no_grad():
        single = model(x)
        double = model.double()(x.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=1e-3, atol=1e-4)


def blocks_as_run(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The blocks of `blocks_in_depth_order()` in the order the forward pass calls them."""
    seen: list[nn.Module] = []
    hooks = [b.register_forward_pre_hook(lambda m, _: seen.append(m)) for b in model.blocks_in_depth_order()]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("name", NAMES)
def test_block_order_covers_every_parameter_once_in_the_order_blocks_run(name):
    model = tiny(name).eval()
    groups = model.block_order()
    names = [n for group in groups for n in group]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # every parameter, once
    blocks = model.blocks_in_depth_order()
    assert blocks_as_run(model, images(model)) == blocks  # each block runs once, in this order
    for block, group in zip(blocks, groups[1:-1], strict=True):
        block_params = {id(p) for p in block.parameters()}
        params = dict(model.named_parameters())
        assert block_params <= {id(params[n]) for n in group}
    assert all(f"{k}.weight" in groups[-1] for k in model.classifier_keys)  # the head is the deepest group


@pytest.mark.parametrize("name", NAMES)
def test_layer_decay_gives_distinct_scales_by_depth(name):
    model = tiny(name)
    depth_of = {n: d for d, group in enumerate(model.block_order()) for n in group}
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    depths = len(model.block_order())
    for pname, param in model.named_parameters():
        if not param.requires_grad:  # frozen by design (T2T-ViT's sinusoid table and Performer features)
            assert id(param) not in scale_of, pname
            continue
        assert scale_of[id(param)] == 0.5 ** (depths - 1 - depth_of[pname]), pname
    assert len({g["lr_scale"] for g in groups}) == sum(1 for group in model.block_order() if group)


@pytest.mark.parametrize("name", NAMES)
def test_img_size_is_accepted_and_never_changes_the_module_tree(name):
    small = tiny(name, img_size=64)
    large = tiny(name, img_size=96)
    assert [n for n, _ in small.named_modules()] == [n for n, _ in large.named_modules()]


@pytest.mark.parametrize("name", NAMES)
def test_inputs_of_the_wrong_shape_are_named(name):
    model = tiny(name).eval()
    channels = model.in_chans
    with pytest.raises(ValueError, match=rf"\(batch, {channels}, height, width\).*\(2, {channels + 1}, 32, 32\)"):
        model(torch.randn(2, channels + 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, .*\(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_is_strict_and_exact(name):
    source, target = tiny(name).eval(), tiny(name).eval()
    vitlab.checkpoint.load_state_dict(target, source.state_dict())
    x = images(source)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))
