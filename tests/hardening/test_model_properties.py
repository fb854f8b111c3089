"""Property tests over every registered model: generated constructor arguments and inputs either run,
giving finite outputs and a deterministic evaluation, or raise vitlab's own error (a ValueError)
naming the argument or the size at fault; never a RuntimeError, IndexError, ... from inside a layer.

Each test walks the registry, so a new family is covered by registering. The number of examples per
model is the hypothesis profile's (tests/hardening/conftest.py): a few in `make test`, many in
`make fuzz`.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vitlab
from tests.hardening.strategies import changed, image_sizes, names_an_argument, overrides
from vitlab.registry import get_entry
from vitlab.seq2seq.base import BOS, PAD

CLASSIFIERS = vitlab.list_models(task="image-classification")
SEGMENTERS = vitlab.list_models(task="semantic-segmentation")
SEQUENCE = vitlab.list_models(task="sequence-to-sequence")

GENERIC = {
    "num_classes": st.integers(1, 7),
    "in_chans": st.integers(1, 4),
    "img_size": st.sampled_from([16, 28, 33, 48, 64, 96]),
}


def build(name: str, args: dict, tiny: dict):
    """The model, or None when construction is refused with a ValueError naming a changed argument."""
    torch.manual_seed(0)
    try:
        return vitlab.create_model(name, **args).eval()
    except ValueError as err:
        assert names_an_argument(str(err), changed(args, tiny)), f"{name}{changed(args, tiny)}: {err}"
        return None


def run_twice(model, *inputs):
    """Outputs of two evaluation passes; the error of the first is raised as it is."""
    with torch.no_grad():
        return model(*inputs), model(*inputs)


def check_images(model, name: str, size: tuple[int, int], batch: int, expect) -> None:
    x = torch.randn(batch, model.in_chans, *size, generator=torch.Generator().manual_seed(1))
    try:
        first, again = run_twice(model, x)
    except ValueError as err:  # a size the model cannot take: the error names it
        message = str(err)
        assert f"{size[0]}x{size[1]}" in message or str(min(size)) in message, f"{name} at {size}: {message}"
        return
    assert first.shape == expect(x), f"{name} at {size}: {tuple(first.shape)}"
    assert torch.isfinite(first).all(), f"{name} at {size}: non-finite output"
    assert torch.equal(first, again), f"{name} at {size}: evaluation is not deterministic"


@pytest.mark.parametrize("name", CLASSIFIERS)
@given(data=st.data())
def test_classifiers_run_or_refuse_by_name(name, data):
    tiny = get_entry(name).tiny
    args = data.draw(overrides(tiny, GENERIC), label="arguments")
    model = build(name, args, tiny)
    if model is None:
        return
    for _ in range(2):
        size = data.draw(image_sizes(), label="size")
        batch = data.draw(st.integers(1, 2), label="batch")
        check_images(model, name, size, batch, lambda x: (x.shape[0], model.num_classes))


@pytest.mark.parametrize("name", SEGMENTERS)
@given(data=st.data())
def test_segmentation_models_run_or_refuse_by_name(name, data):
    tiny = get_entry(name).tiny
    args = data.draw(overrides(tiny, {"num_classes": GENERIC["num_classes"]}), label="arguments")
    model = build(name, args, tiny)
    if model is None:
        return
    size = data.draw(image_sizes(), label="size")
    batch = data.draw(st.integers(1, 2), label="batch")
    check_images(model, name, size, batch, lambda x: (x.shape[0], model.num_classes, *x.shape[-2:]))


def token_batch(data, model, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source tokens of the given lengths and their padding mask (True at padding)."""
    longest = max(lengths)
    src = torch.tensor(
        [data.draw(st.lists(st.integers(3, model.src_vocab_size - 1), min_size=n, max_size=n)) + [PAD] * (longest - n)
         for n in lengths]
    )  # fmt: skip
    padding = torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None]
    return src, padding


@pytest.mark.parametrize("name", SEQUENCE)
@given(data=st.data())
def test_sequence_models_take_any_lengths_and_padding(name, data):
    """Sources of random lengths, right-padded in one batch: each item's logits are those of the item
    alone without its padding; a target of any length up to the model's limit decodes."""
    tiny = get_entry(name).tiny
    model = build(name, dict(tiny), tiny)
    batch = data.draw(st.integers(1, 3), label="batch")
    limit = model.max_target_len or 12
    tgt_len = data.draw(st.integers(1, limit), label="target length")
    tgt = torch.randint(3, model.tgt_vocab_size, (batch, tgt_len), generator=torch.Generator().manual_seed(2))
    tgt[:, 0] = BOS
    if hasattr(model, "strip_size"):  # image strips: any width, no padding mask
        height, _ = model.strip_size
        width = data.draw(st.integers(1, 3 * model.strip_size[1]), label="strip width")
        src = torch.randn(batch, model.in_chans, height, width, generator=torch.Generator().manual_seed(1))
        try:
            first, again = run_twice(model, src, tgt)
        except ValueError as err:
            assert str(width) in str(err), f"{name} at width {width}: {err}"
            return
        assert torch.isfinite(first).all() and torch.equal(first, again)
        return
    lengths = data.draw(st.lists(st.integers(1, 20), min_size=batch, max_size=batch), label="source lengths")
    src, padding = token_batch(data, model, lengths)
    first, again = run_twice(model, src, tgt, padding)
    assert first.shape == (batch, tgt_len, model.tgt_vocab_size)
    assert torch.isfinite(first).all() and torch.equal(first, again)
    with torch.no_grad():
        for i, n in enumerate(lengths):
            alone = model(src[i : i + 1, :n], tgt[i : i + 1])
            torch.testing.assert_close(first[i : i + 1], alone, rtol=1e-4, atol=1e-5, msg=f"{name} item {i}")


@pytest.mark.parametrize("name", SEQUENCE)
@given(data=st.data())
def test_sequence_models_refuse_bad_tokens_and_masks_by_name(name, data):
    tiny = get_entry(name).tiny
    model = build(name, dict(tiny), tiny)
    if hasattr(model, "strip_size"):
        src = torch.randn(1, model.in_chans, *model.strip_size)
    else:
        src = torch.randint(3, model.src_vocab_size, (2, 5))
    tgt = torch.full((src.shape[0], 3), BOS)
    fault = data.draw(st.sampled_from(["target id", "empty target", "source id", "all padding", "mask shape"]))
    if fault == "target id":
        tgt[0, -1] = model.tgt_vocab_size + data.draw(st.integers(0, 5))
        expected, args = "tgt", (src, tgt)
    elif fault == "empty target":
        expected, args = "tgt", (src, tgt[:, :0])
    elif hasattr(model, "strip_size"):
        return  # image strips have no token ids or padding masks
    elif fault == "source id":
        src[1, 2] = data.draw(st.sampled_from([-1, model.src_vocab_size]))
        expected, args = "src", (src, tgt)
    elif fault == "all padding":
        padding = torch.zeros(2, 5, dtype=torch.bool)
        padding[data.draw(st.integers(0, 1))] = True
        expected, args = "src_padding", (src, tgt, padding)
    else:
        expected, args = "src_padding", (src, tgt, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=expected):
        run_twice(model, *args)
