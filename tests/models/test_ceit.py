"""CeiT: counts, the official layout, LeFF and LCA against per-token readings of the official code,
any input size, checkpoints.

Parity with the official code is in tests/parity (fixtures from tools/fixtures/ceit.py).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.analysis.complexity import count_params
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.models.ceit import LCABlock, LocallyEnhancedFeedForward

# Counts of the official code (references/backbones.md, and the issue), in millions to 2 decimals.
PARAMS = {
    "ceit_tiny_patch16_224": 6.36,
    "ceit_small_patch16_224": 24.20,
    "ceit_base_patch16_224": 94.41,
    "ceit_tiny_patch16_384": 6.43,
    "ceit_small_patch16_384": 24.35,
}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_the_official_code(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(count_params(model) / 1e6, 2) == PARAMS[name]


def test_macs_match_the_official_code():
    assert round(vitlab.model_info("ceit_tiny_patch16_224")["gmacs"], 2) == 1.40  # official, LeFF convs counted: 1.395


def test_state_dict_has_the_official_layout():
    with torch.device("meta"):
        state = vitlab.create_model("ceit_tiny_patch16_224").state_dict()
    assert len(state) == 375  # as the official ceit_tiny_patch16_224
    shapes = {
        "i2t.backbone.conv.weight": (64, 3, 7, 7),
        "i2t.backbone.bn.running_var": (64,),
        "i2t.proj.weight": (192, 64, 4, 4),
        "pos_embed": (1, 197, 192),
        "pos_layer_embed": (1, 12, 192),
        "blocks.11.attn.qkv.bias": (576,),
        "blocks.0.leff.conv1.weight": (768, 192, 1, 1),
        "blocks.0.leff.conv2.weight": (768, 1, 3, 3),
        "blocks.0.leff.bn3.num_batches_tracked": (),
        "lca.attn.qkv.weight": (576, 192),
        "lca.feedforward.fc2.weight": (192, 768),
        "head.weight": (1000, 192),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes


def randomized(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    return module.double().eval()


def batch_norm(x, bn):
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def test_leff_is_pointwise_depthwise_pointwise_on_the_grid_and_passes_the_class_token():
    """Each patch, one at a time: 1x1 + BN + GELU, then its 3x3 neighbourhood (zero outside), + BN + GELU,
    then 1x1 + BN; on a 3x4 grid, so rows and columns cannot be swapped unnoticed."""
    torch.manual_seed(0)
    leff = randomized(LocallyEnhancedFeedForward(4, 6))
    rows, cols = 3, 4
    x = torch.randn(2, 1 + rows * cols, 4, dtype=torch.float64)
    with torch.no_grad():
        actual = leff(x, (rows, cols))
        w1, w2, w3 = leff.conv1.weight[:, :, 0, 0], leff.conv2.weight[:, 0], leff.conv3.weight[:, :, 0, 0]
        hidden = [F.gelu(batch_norm(x[:, 1 + n] @ w1.T + leff.conv1.bias, leff.bn1)) for n in range(rows * cols)]
        for n in range(rows * cols):
            r, c = divmod(n, cols)
            mixed = leff.conv2.bias.expand(2, -1).clone()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < rows and 0 <= c + dc < cols:
                        mixed = mixed + hidden[(r + dr) * cols + c + dc] * w2[:, dr + 1, dc + 1]
            mixed = F.gelu(batch_norm(mixed, leff.bn2))
            expected = batch_norm(mixed @ w3.T + leff.conv3.bias, leff.bn3)
            torch.testing.assert_close(actual[:, 1 + n], expected, rtol=1e-10, atol=1e-10)
    assert torch.equal(actual[:, 0], x[:, 0])


def test_lca_attends_from_the_last_class_token_to_all_of_them():
    torch.manual_seed(0)
    lca = randomized(LCABlock(6, 2, 2.0, True, 0.0, 0.0, torch.nn.LayerNorm))
    x = torch.randn(2, 5, 6, dtype=torch.float64)  # the class tokens of 5 layers
    with torch.no_grad():
        actual = lca(x)
        normed = lca.norm1(x)
        w, b = lca.attn.qkv.weight, lca.attn.qkv.bias
        heads = []
        for h in range(2):
            rows = slice(3 * h, 3 * h + 3)
            q = normed[:, -1] @ w[:6][rows].T + b[:6][rows]
            keys = normed @ w[6:12][rows].T + b[6:12][rows]
            values = normed @ w[12:][rows].T + b[12:][rows]
            weights = (torch.einsum("bd,bnd->bn", q, keys) / math.sqrt(3)).softmax(-1)
            heads.append(torch.einsum("bn,bnd->bd", weights, values))
        y = x[:, -1] + lca.attn.proj(torch.cat(heads, -1))
        expected = y + lca.feedforward(lca.norm2(y))
    assert actual.shape == (2, 1, 6)
    torch.testing.assert_close(actual[:, 0], expected, rtol=1e-10, atol=1e-10)


def small(name="ceit_tiny_patch16_224", **kwargs):
    return vitlab.create_model(name, **{**dict(embed_dim=24, depth=2, num_heads=2, stem_chans=8), **kwargs}).eval()


def test_any_input_size_reaches_leff_with_its_grid():
    model = small()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 48, 80), [0, 1])  # a 3x5 grid
        assert [tuple(m.shape) for m in maps] == [(1, 24, 3, 5)] * 2
        assert model(torch.randn(1, 3, 50, 20)).shape == (1, 1000)  # padded to 64x32: a 4x2 grid


def test_official_training_checkpoints_load_natively(tmp_path):
    source = small()
    path = tmp_path / "ceit_tiny.pth"
    torch.save({"model": source.state_dict(), "epoch": 299}, path)  # the official (DeiT) training file
    model = small()
    assert vitlab.load_checkpoint(model, path) == "native"
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_a_224_checkpoint_loads_into_the_384_configuration():
    trained = small()
    model = small("ceit_tiny_patch16_384")
    load_state_dict(model, trained.state_dict())
    assert model.pos_embed.shape == (1, 577, 24)


def test_a_checkpoint_of_another_variant_is_refused_by_name():
    tiny = small(num_heads=3)
    with pytest.raises(
        CheckpointError, match=r"mis-shaped keys.*i2t\.proj\.weight \(checkpoint \(24, 8, 4, 4\), model"
    ):
        load_state_dict(small(embed_dim=36, num_heads=3), tiny.state_dict())
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): blocks\.2\.norm1\.weight"):
        load_state_dict(small(depth=3), tiny.state_dict())


def test_mini_model_has_its_size_and_trains():
    model = vitlab.create_model("ceit_mini_28", in_chans=1, num_classes=10)
    assert 0.40e6 <= count_params(model) <= 0.50e6
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
