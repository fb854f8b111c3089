"""The contract every sequence-to-sequence variant keeps, checked on each through its `tiny=` configuration
(the classification contract test walks image classifiers only). Each check compares against something
computed another way: a batch against its samples, a checkpointed pass against a plain one, a reloaded
model against the original."""

import pytest
import torch
from torch import nn

import vitlab
from tests.helpers import assert_state_dict_round_trip, count_saved_tensors
from vitlab.checkpoint import CheckpointError, load_checkpoint
from vitlab.layers.attention import AttentionLayer
from vitlab.registry import get_entry
from vitlab.seq2seq.base import BOS
from vitlab.seq2seq.decoding import greedy_decode

NAMES = vitlab.list_models(task="sequence-to-sequence")


def tiny(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return vitlab.create_model(name, **{**get_entry(name).tiny, **overrides})


def inputs(model: nn.Module, batch: int = 3, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if hasattr(model, "strip_size"):
        height, full = model.strip_size
        src = torch.randn(batch, model.in_chans, height, width or full, generator=generator)
        length = model.max_target_len
    else:
        src = torch.randint(3, model.src_vocab_size, (batch, width or 6), generator=generator)
        length = 5
    tgt = torch.randint(3, model.tgt_vocab_size, (batch, length), generator=generator)
    tgt[:, 0] = BOS
    return src, tgt


def test_the_task_has_its_named_variants():
    assert {"transformer_base", "transformer_big", "image_to_sequence_vit", "gru_bahdanau_small",
            "lstm_luong_small"} <= set(NAMES)  # fmt: skip
    assert not set(NAMES) & set(vitlab.list_models(task="image-classification"))


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_is_its_samples_at_any_source_size(name):
    model = tiny(name).eval()
    widths = [None, 45] if hasattr(model, "strip_size") else [None, 9]  # image strips of other widths run too
    for width in widths:
        src, tgt = inputs(model, width=width)
        with torch.no_grad():
            batch = model(src, tgt)
            alone = torch.cat([model(src[i : i + 1], tgt[i : i + 1]) for i in range(3)])
            again = model(src, tgt)
        assert batch.shape == (*tgt.shape, model.tgt_vocab_size) and torch.isfinite(batch).all()
        torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)
        assert torch.equal(batch, again)


@pytest.mark.parametrize("name", NAMES)
def test_float64_and_greedy_decoding(name):
    model = tiny(name).double().eval()
    src, _ = inputs(model)
    src = src.double() if src.is_floating_point() else src
    out = greedy_decode(model, src, max_len=4)
    assert out.shape[0] == 3 and out.shape[1] <= 4 and out.dtype == torch.long


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    def grads(checkpointing: bool):
        model = tiny(name).train()
        for m in model.modules():  # dropout off: the two runs must compute the same thing
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        model.set_grad_checkpointing(checkpointing)
        src, tgt = inputs(model)
        out, saved = count_saved_tensors(lambda: model(src, tgt))
        out.square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, saved

    plain, saved_plain = grads(False)
    checkpointed, saved_checkpointed = grads(True)
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-5, atol=1e-7, msg=key)
    if not name.startswith(("gru", "lstm")):  # a recurrence has no blocks to recompute
        assert saved_checkpointed < saved_plain


@pytest.mark.parametrize("name", NAMES)
def test_capture_attention_records_every_attention_layer(name):
    model = tiny(name).eval()
    src, tgt = inputs(model)
    layers = [n for n, m in model.named_modules() if isinstance(m, AttentionLayer)]
    with torch.no_grad():
        with vitlab.capture_attention(model) as maps:
            logits = model(src, tgt)
        assert torch.equal(logits, model(src, tgt))  # recording changes nothing
    for layer in layers:
        assert maps[layer], layer
        probs = maps[layer][0]
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    cross = [n for n in layers if "cross_attn" in n or n == "attn"]
    assert cross and all(maps[n][-1].shape[-1] > 1 for n in cross)  # the decoder reads the source


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_and_block_order(name):
    model = tiny(name)
    other = tiny(name, **({"dropout": 0.0} if not name.startswith(("gru", "lstm")) else {}))
    torch.manual_seed(5)
    for p in other.parameters():
        nn.init.normal_(p)
    assert_state_dict_round_trip(model, other, *inputs(model))
    names = [n for n, _ in model.named_parameters()]
    order = [n for group in model.block_order() for n in group]
    assert sorted(order) == sorted(names) and len(order) == len(set(order))


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_of_another_configuration_is_refused_naming_the_keys(name, tmp_path):
    entry = get_entry(name)
    bigger = {"num_decoder_layers": 2} if "num_decoder_layers" in entry.builder.__init__.__code__.co_varnames else {}
    bigger = bigger or ({"decoder_layers": 2} if name.startswith("image") else {"hidden_size": 12})
    path = tmp_path / "other.pt"
    torch.save(tiny(name, **bigger).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"(?s)does not fit .*(unexpected keys|mis-shaped keys) \(\d+\): \w"):
        load_checkpoint(tiny(name), path)


@pytest.mark.parametrize("name", NAMES)
def test_model_info_counts_params_and_macs(name):
    info = vitlab.model_info(name)
    with torch.device("meta"):
        model = get_entry(name).builder(**get_entry(name).config)
    assert info["params"] == sum(p.numel() for p in model.parameters()) and info["gmacs"] > 0
