"""The contract every registered segmentation model keeps, checked through its `tiny=` configuration.

A segmentation family gets these checks by registering its variants with
task="semantic-segmentation". Each check compares against something computed another way: a batch
against its samples, a checkpointed backward pass against a plain one, the decoder's parameters
against those the backbone does not hold. Parameters a model lists in `unused_parameter_names()`
(layers that exist only so that released checkpoints load strictly, such as mmseg's `conv_seg`)
are exempt from the gradient check, and only those.
"""

import pytest
import torch
from torch import nn

import vitlab
from tests.helpers import assert_state_dict_round_trip, count_saved_tensors
from vitlab.registry import get_entry
from vitlab.segmentation import SegmentationModel, SegmentationOutput

NAMES = vitlab.list_models(task="semantic-segmentation")
CLASSES = 3
SIZES = [(64, 64), (37, 53)]  # sides that divide every stride, and sides that divide none


def tiny(name: str, **overrides) -> SegmentationModel:
    torch.manual_seed(0)
    return vitlab.create_model(name, num_classes=CLASSES, **{**get_entry(name).tiny, **overrides})


def images(size=(64, 64), batch: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def unused(model: nn.Module) -> set[str]:
    return set(model.unused_parameter_names())


def has_auxiliary_heads(model: SegmentationModel) -> bool:
    heads = getattr(model, "auxiliary_head", None)
    return heads is not None and len(list(heads.parameters())) > 0


def test_segmentation_variants_are_registered():
    assert {"setr_pup_vit_large_768", "segmenter_tiny_mask"} <= set(NAMES)
    for name in NAMES:
        entry = get_entry(name)
        assert entry.task == "semantic-segmentation" and entry.num_classes in (19, 150), name


@pytest.mark.parametrize("name", NAMES)
def test_logits_at_the_input_size_and_a_batch_is_its_samples(name):
    model = tiny(name).eval()
    assert isinstance(model, SegmentationModel)
    for size in SIZES:
        x = images(size, batch=3)
        with torch.no_grad():
            batch = model(x)
            alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
            again = model(x)
        assert batch.shape == (3, CLASSES, *size) and torch.isfinite(batch).all()
        torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)  # no sample sees another in eval
        assert torch.equal(batch, again)  # deterministic evaluation


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_refused_by_shape(name):
    model = tiny(name).eval()
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, height, width\)"):
        model(torch.randn(2, 1, 64, 64))


@pytest.mark.parametrize("name", NAMES)
def test_float64_runs_in_float64(name):
    model = tiny(name).eval().double()
    with torch.no_grad():
        out = model(images(dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (2, CLASSES, 64, 64)


@pytest.mark.parametrize("name", NAMES)
def test_training_gives_auxiliary_logits_iff_the_model_has_auxiliary_heads(name):
    model = tiny(name).train()
    out = model.forward_logits(images())
    assert isinstance(out, SegmentationOutput) and out.logits.shape[:2] == (2, CLASSES)
    assert len(out.aux) == len(out.aux_weights)
    assert bool(out.aux) == has_auxiliary_heads(model)
    if has_auxiliary_heads(model):
        assert len(out.aux) == len(model.auxiliary_head)
        assert all(a.shape[:2] == (2, CLASSES) and a.ndim == 4 for a in out.aux)
        assert all(w > 0 for w in out.aux_weights)
    assert not model.eval().forward_logits(images()).aux  # evaluation never pays for the auxiliary heads


def loss_of(model: SegmentationModel, x: torch.Tensor) -> torch.Tensor:
    out = model.forward_logits(x)
    loss = out.logits.square().mean()
    for aux, weight in zip(out.aux, out.aux_weights, strict=True):
        loss = loss + weight * aux.square().mean()
    return loss


@pytest.mark.parametrize("name", NAMES)
def test_a_backward_pass_reaches_every_parameter(name):
    model = tiny(name).train()
    loss_of(model, images()).backward()
    skipped = unused(model)
    assert skipped <= {n for n, _ in model.named_parameters()}
    reached = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    missed = [n for n, _ in model.named_parameters() if n not in reached | skipped]
    assert not missed, f"{name}: no gradient reaches {missed[:8]}"
    assert not reached & skipped  # listed as unused, and indeed unused


@pytest.mark.parametrize("name", NAMES)
def test_head_parameter_names_are_exactly_the_parameters_outside_the_backbone(name):
    model = tiny(name)
    backbone = {id(p) for p in model.backbone.parameters()}
    outside = [n for n, p in model.named_parameters() if id(p) not in backbone]
    assert outside and sorted(model.head_parameter_names()) == sorted(outside)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    model = tiny(name)
    torch.manual_seed(1)
    other = vitlab.create_model(name, num_classes=CLASSES, **get_entry(name).tiny)
    assert_state_dict_round_trip(model, other, images((37, 53)))


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_gives_the_same_gradients_and_saves_less(name):
    def gradients(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        model = tiny(name).train()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(5)  # dropout and drop-path masks: the recomputation must replay them
        loss, saved = count_saved_tensors(lambda: loss_of(model, images()))
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, saved

    plain, saved_plain = gradients(False)
    checkpointed, saved_checkpointed = gradients(True)
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)
    assert saved_checkpointed < saved_plain


@pytest.mark.parametrize("name", NAMES)
def test_capture_attention_records_every_attention_layer_and_leaves_the_logits(name):
    model = tiny(name).eval()
    x = images((37, 53))
    with torch.no_grad():
        plain = model(x)
        with vitlab.capture_attention(model) as maps:
            captured = model(x)
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-6)
    assert maps and all(len(probs) == 1 for probs in maps.values()), f"{name}: a layer recorded nothing"
    for probs in maps.values():
        torch.testing.assert_close(probs[0].sum(-1), torch.ones_like(probs[0].sum(-1)))
