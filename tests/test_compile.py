"""torch.compile: every registered model's forward traces into one graph, and input sizes do not recompile forever.

`fullgraph=True` turns any graph break (data-dependent Python control flow, `.item()`, `.tolist()`,
an untraceable cache) into an error, so the registry walk fails on the first model that breaks.
Dynamo's tracing is where graph breaks happen; the walk uses the "eager" backend (no code
generation) so that it stays fast, and a few representative models go through inductor, the
backend `vitlab train --compile` and `vitlab bench --compile` use, with outputs compared against
the plain forward pass.
"""

import json
import os

import pytest
import torch
import torch._dynamo

import vitlab
from tests.helpers import graphs_compiled
from vitlab.registry import get_entry
from vitlab.seq2seq.base import BOS


def distinct_configurations() -> list[str]:
    """One name per (class, tiny constructor arguments): variants differing only outside `tiny` run the same code."""
    seen: dict[str, str] = {}
    for name in vitlab.list_models():
        entry = get_entry(name)
        config = {**entry.config, **entry.tiny}
        key = json.dumps([entry.task, repr(entry.builder), config], sort_keys=True, default=repr)
        seen.setdefault(key, name)
    return list(seen.values())


NAMES = distinct_configurations()


def tiny(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    entry = get_entry(name)
    classes = {} if entry.task == "sequence-to-sequence" else {"num_classes": 3}
    return vitlab.create_model(name, **classes, **entry.tiny, **overrides).eval()


def example_inputs(model: torch.nn.Module, size=(64, 64)) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    if getattr(model, "task", None) != "sequence-to-sequence":
        return (torch.randn(2, model.in_chans, *size, generator=generator),)
    if hasattr(model, "strip_size"):
        src = torch.randn(2, model.in_chans, *model.strip_size, generator=generator)
        length = model.max_target_len
    else:
        src = torch.randint(3, model.src_vocab_size, (2, 6), generator=generator)
        length = 5
    tgt = torch.randint(3, model.tgt_vocab_size, (2, length), generator=generator)
    tgt[:, 0] = BOS
    return src, tgt


def logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def test_the_walk_covers_every_family():
    classes = {repr(get_entry(name).builder) for name in vitlab.list_models()}
    assert {repr(get_entry(name).builder) for name in NAMES} == classes
    assert len(NAMES) >= 20


@pytest.mark.parametrize("name", NAMES)
def test_forward_compiles_without_graph_breaks(name):
    model = tiny(name)
    inputs = example_inputs(model)
    # Dynamo traces nn.GRU / nn.LSTM only when asked to (an experimental switch in torch): the recurrent
    # seq2seq baselines compile into one graph with it, and break on the RNN module without it.
    recurrent = any(isinstance(m, torch.nn.RNNBase) for m in model.modules())
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad(), torch._dynamo.config.patch(allow_rnn=recurrent):
        expected, actual = model(*inputs), compiled(*inputs)
    torch.testing.assert_close(logits(actual), logits(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["vit_small_patch16_224"])  # Swin (239 s) and PVT v2 B0 (115 s): by hand
def test_inductor_compiles_to_the_same_outputs_and_gradients(name):
    model = tiny(name, drop_path_rate=0.0).train()  # (Swin's default stochastic depth would differ run to run)
    x = example_inputs(model)[0]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    expected, actual = model(x), compiled(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    compiled_grads = torch.autograd.grad(actual.square().sum(), list(model.parameters()))
    for a, b in zip(compiled_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "pvt_v2_b0", "convit_tiny"])
def test_new_input_sizes_reuse_the_dynamic_graph(name):
    """The first size compiles a static graph, the second one graph with symbolic sides, which the third reuses.

    (The grouping families build their plans in the graph under torch.compile: tests below; every family
    over four sizes: `tools/recompiles.py`, docs/export.md.)"""
    model = tiny(name)
    inputs = [example_inputs(model, size)[0] for size in [(128, 128), (144, 144), (176, 240)]]
    assert graphs_compiled(model, inputs) == 2


def test_a_grouped_family_compiles_once_more_for_new_sizes_then_reuses_the_graph():
    """SASA's neighbourhoods (a grouping with a plan per map size): the second size compiles one graph with
    symbolic sides, which the third and fourth reuse. (Measured before plans were built in the graph: axial26s, 4 graphs
    for 4 sizes; Swin's second compilation did not finish in 9.5 minutes; docs/export.md.)"""
    model = tiny("sasa_resnet26")
    inputs = [example_inputs(model, size)[0] for size in [(32, 32), (48, 48), (40, 56), (64, 40)]]
    assert graphs_compiled(model, inputs) == 2


def test_swin_window_attention_compiles_two_graphs_for_four_sizes():
    """Swin's windows under torch.compile: the plan (padding, shift, phantom keys of sides shorter than the
    window, shift mask) is computed in the graph from the sizes, so after the first, static graph one graph
    with symbolic sides serves sizes shorter than, equal to and longer than the window, square or not."""
    from vitlab.layers.grouping.windows import WindowAttention

    torch.manual_seed(0)
    layer = WindowAttention(8, 2, window_size=7, shift_size=3).eval()
    sizes = [(16, 16), (18, 18), (22, 30), (5, 12)]
    inputs = [torch.randn(2, *size, 8, generator=torch.Generator().manual_seed(size[0])) for size in sizes]
    assert graphs_compiled(layer, inputs) == 2


def test_axial_attention_compiles_two_graphs_for_sizes_across_the_span():
    """An Axial-ResNet block (column and row attention, the second strided): in a graph each layer resamples its
    relative table to max(2 L - 1, 2 span - 1) offsets and gathers the centred rows, so after the first, static
    graph one graph with symbolic sides serves axes shorter than, equal to and longer than the span (8). (Before:
    the crop-or-resample choice `length <= span` and the 1x1 convolution's kernel choice, B * axis >= 16, guarded
    on the sizes: 4 graphs here, and 4 for the tiny axial26s at four sizes; docs/export.md.)"""
    from vitlab.models.axial import AxialBlock

    torch.manual_seed(0)
    block = AxialBlock(8, 4, stride=2, groups=2, span=8, downsample=True).eval()
    sizes = [(6, 6), (8, 8), (12, 9), (10, 5)]
    inputs = [torch.randn(2, 8, *size, generator=torch.Generator().manual_seed(size[0])) for size in sizes]
    assert graphs_compiled(block, inputs) == 2


def cswin_or_pale_block(family: str) -> torch.nn.Module:
    from vitlab.models.cswin import CSWinBlock
    from vitlab.models.pale import PaleBlock

    torch.manual_seed(0)
    block = CSWinBlock(16, 4, 7, full_attention=False) if family == "cswin" else PaleBlock(16, 4, 7)
    return block.eval()


@pytest.mark.parametrize("family", ["cswin", "pale"])
def test_stripes_and_pales_compile_two_graphs_for_four_sizes(family):
    """CSWin's stripes and Pale's interlaced groups (both branches of a block, stripe or pale size 7) under
    torch.compile: in the graph a plan is a gather of token slots computed from the sizes
    (`layers/grouping/slots.py`), so after the first, static graph one graph with symbolic sides serves maps
    with one stripe (group) per side or several, exactly divided, padded or narrower than the stripe, square
    or not. Before, a map with one stripe along a side compiled a graph of its own (torch's contiguity test of
    a view asked whether the number of stripes was 1), and the whole tiny models' second compilation did not
    finish in 400 s (docs/export.md, "Bounded recompiles: CSWin, Pale"). A third graph is an error here."""
    block = cswin_or_pale_block(family)
    sizes = [(9, 16), (10, 9), (11, 7), (5, 12), (20, 13)]
    inputs = [torch.randn(2, *size, 16, generator=torch.Generator().manual_seed(size[0])) for size in sizes]
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        assert graphs_compiled(block, inputs) == 2


@pytest.mark.skipif(os.environ.get("VITLAB_COMPILE_ALL") != "1", reason="a minute per model: VITLAB_COMPILE_ALL=1")
@pytest.mark.parametrize("name", ["cswin_tiny_224", "pale_tiny_224"])
def test_whole_grouped_models_compile_two_graphs_for_four_sizes(name):
    """The tiny CSWin and Pale, four stages: 128x128, then one symbolic graph for 144x144, 176x240 and 96x112."""
    model = tiny(name)
    inputs = [example_inputs(model, size)[0] for size in [(128, 128), (144, 144), (176, 240), (96, 112)]]
    assert graphs_compiled(model, inputs) == 2


# Reduced Swin and DAT in which one stage crosses the one-window boundary between the sizes: after the
# static graph, the symbolic one is traced at a size where that stage has several windows, and a later
# size makes it one window (Swin: 24x28 -> a 6x7 map; DAT, stage 3 at stride 16: 72x72 and 88x264),
# or the other way round. DAT's sizes keep its stride-32 map at least 2 pixels a side: a side of 1 gets
# a graph of its own (torch specialises sizes of 1 in its own operators; docs/export.md).
ONE_WINDOW_CROSSINGS = {
    "swin_tiny_patch4_window7_224": (
        dict(embed_dim=8, depths=(2,), num_heads=(2,)),
        [(64, 64), (72, 72), (88, 120), (24, 28)],
    ),
    "dat_tiny": (
        dict(dims=(8, 16, 32, 64), heads=(1, 1, 2, 2), stage_spec=("", "", "SD", ""), groups=(None, None, 1, None)),
        [(64, 64), (136, 136), (72, 72), (88, 264)],
    ),
}


@pytest.mark.parametrize("name", ONE_WINDOW_CROSSINGS)
def test_swin_and_dat_compile_two_graphs_across_one_window_boundaries(name):
    """Whole models, not just the window layer: a stage that becomes one window does not recompile (the
    in-graph mask and views never hold a dimension of `num_windows` alone, which torch would guard as
    `!= 1`), nor does DAT's deformable attention at new sizes (its offset scale is read from the
    symbolic sides, not fixed by them). Before: Swin 3 graphs, DAT one per size."""
    overrides, sizes = ONE_WINDOW_CROSSINGS[name]
    torch.manual_seed(0)
    model = vitlab.create_model(name, num_classes=3, **overrides).eval()
    inputs = [example_inputs(model, size)[0] for size in sizes]
    assert graphs_compiled(model, inputs) == 2


def test_train_compile_runs_the_same_step_compiled(tmp_path):
    from tests.train.test_wiring import first_batch, prepared

    plain, compiled = prepared(tmp_path, "plain"), prepared(tmp_path, "compiled", compile=True)
    assert compiled.module._compiled_call_impl is not None and plain.module._compiled_call_impl is None
    assert compiled.state.model.state_dict().keys() == plain.state.model.state_dict().keys()
    images, labels = first_batch(plain)
    for run in (plain, compiled):
        run.task.loss(run.module, images, labels, run.amp).backward()
    for (name, a), b in zip(plain.state.model.named_parameters(), compiled.state.model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
