"""ConViT: counts, GPSA against a per-token reading of the paper's equation, the locality
initialisation, the late class token, any input size, checkpoints.

Parity with timm's ConViT is in tests/parity (fixtures from tools/fixtures/convit.py).
"""

import math

import pytest
import torch

import vitlab
from vitlab.analysis.complexity import count_params
from vitlab.checkpoint import CheckpointError, load_state_dict
from vitlab.layers.grouping import PLANS
from vitlab.models.convit import GatedPositionalSelfAttention, patch_offsets

# timm's counts (references/backbones.md: 5.711 / 27.777 / 86.540M), in millions to 2 decimals.
PARAMS = {"convit_tiny": 5.71, "convit_small": 27.78, "convit_base": 86.54}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts_match_timm(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(count_params(model) / 1e6, 2) == PARAMS[name]


def test_macs_match_timm_unfused():
    assert round(vitlab.model_info("convit_tiny")["gmacs"], 2) == 1.25  # timm, TIMM_FUSED_ATTN=0: 1.252


def test_state_dict_has_timms_layout():
    with torch.device("meta"):
        state = vitlab.create_model("convit_tiny").state_dict()
    assert state["pos_embed"].shape == (1, 196, 192)  # no class-token slot
    assert state["blocks.0.attn.qk.weight"].shape == (384, 192) and "blocks.0.attn.qk.bias" not in state
    assert state["blocks.9.attn.pos_proj.weight"].shape == (4, 3) and state["blocks.9.attn.gating_param"].shape == (4,)
    assert state["blocks.10.attn.qkv.weight"].shape == (576, 192) and "blocks.10.attn.qkv.bias" not in state
    assert not any("rel_indices" in k for k in state)  # not persistent in the references either


def naive_gpsa(attn: GatedPositionalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """ConViT eq. 5, one query patch and head at a time, offsets from the patches' (row, column)."""
    B, H, W, C = x.shape
    tokens = x.reshape(B, H * W, C)
    heads, d = attn.num_heads, attn.head_dim
    wq, wk = attn.qk.weight[:C], attn.qk.weight[C:]
    out = torch.zeros(B, H * W, C, dtype=x.dtype)
    for i in range(H * W):
        for h in range(heads):
            rows = slice(h * d, (h + 1) * d)
            q = tokens[:, i] @ wq[rows].T
            scores = torch.stack([(q * (tokens[:, j] @ wk[rows].T)).sum(-1) for j in range(H * W)], -1)
            content = (scores / math.sqrt(d)).softmax(-1)
            pos_logits = []
            for j in range(H * W):
                dy, dx = j // W - i // W, j % W - i % W
                r = torch.tensor([dx, dy, dx * dx + dy * dy], dtype=x.dtype)
                pos_logits.append(attn.pos_proj.weight[h] @ r + attn.pos_proj.bias[h])
            positional = torch.stack(pos_logits).softmax(-1)
            gate = torch.sigmoid(attn.gating_param[h])
            weights = (1 - gate) * content + gate * positional  # (B, N)
            values = tokens @ attn.v.weight[rows].T  # (B, N, d)
            out[:, i, rows] = torch.einsum("bn,bnd->bd", weights, values)
    return attn.proj(out).reshape(B, H, W, C)


def test_gpsa_is_the_papers_gated_mixture_on_a_non_square_grid():
    torch.manual_seed(0)
    attn = GatedPositionalSelfAttention(12, 3).double().eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p))
        x = torch.randn(2, 3, 4, 12, dtype=torch.float64)
        torch.testing.assert_close(attn(x), naive_gpsa(attn, x), rtol=1e-10, atol=1e-10)


def test_offsets_are_cached_per_grid_size():
    first = patch_offsets((3, 5), torch.device("cpu"), torch.float32)
    assert patch_offsets((3, 5), torch.device("cpu"), torch.float32) is first
    assert patch_offsets((5, 3), torch.device("cpu"), torch.float32) is not first
    assert ("convit-offsets", (3, 5), torch.device("cpu"), torch.float32) in PLANS
    # query (0, 0) to key (row 1, column 2): dx = 2, dy = 1
    assert first[0, 1 * 5 + 2].tolist() == [2.0, 1.0, 5.0]


def test_locality_init_makes_each_head_a_local_filter_on_its_own_offset():
    """At init every head of a 9-head GPSA attends most to its offset on a 3x3 grid around the query."""
    model = vitlab.create_model("convit_small", depth=2, local_up_to_layer=1, embed_dim=36)
    attn = model.blocks[0].attn
    torch.testing.assert_close(attn.v.weight, torch.eye(36))
    with torch.no_grad():
        positional = attn.positional_attention((7, 7), torch.zeros(1))  # (heads, 49, 49)
    centre = 3 * 7 + 3
    peaks = {divmod(int(positional[h, centre].argmax()), 7) for h in range(9)}
    assert peaks == {(3 + dy, 3 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def test_the_class_token_joins_after_the_gpsa_blocks():
    model = vitlab.create_model("convit_tiny", embed_dim=32, depth=3, local_up_to_layer=2).eval()
    shapes = []
    hooks = [b.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape))) for b in model.blocks]
    with vitlab.capture_attention(model) as maps, torch.no_grad():
        model(torch.randn(1, 3, 64, 96))  # a 4x6 grid
    for hook in hooks:
        hook.remove()
    assert shapes == [(1, 4, 6, 32), (1, 4, 6, 32), (1, 25, 32)]
    assert maps["blocks.0.attn"][0].shape == (1, 4, 24, 24) and maps["blocks.2.attn"][0].shape == (1, 4, 25, 25)


def test_a_checkpoint_of_another_variant_is_refused_by_name():
    model = vitlab.create_model("convit_tiny", embed_dim=32, depth=12, local_up_to_layer=10)
    other = vitlab.create_model("convit_tiny", embed_dim=32, depth=12, local_up_to_layer=11)  # block 10 is GPSA
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks\.10\.attn\.qkv\.weight") as error:
        load_state_dict(model, other.state_dict())
    assert "blocks.10.attn.gating_param" in str(error.value)
    nine_heads = vitlab.create_model("convit_small", depth=2, local_up_to_layer=1, embed_dim=36)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys.*gating_param \(checkpoint \(4,\), model \(9,\)\)"):
        load_state_dict(nine_heads, other.state_dict())


def test_a_224_checkpoint_loads_at_384_with_its_table_resized():
    trained = vitlab.create_model("convit_tiny", embed_dim=32, depth=2, local_up_to_layer=1).eval()
    model = vitlab.create_model("convit_tiny", embed_dim=32, depth=2, local_up_to_layer=1, img_size=384).eval()
    load_state_dict(model, trained.state_dict())
    assert model.pos_embed.shape == (1, 576, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)


def test_mini_model_has_its_size_and_trains():
    model = vitlab.create_model("convit_mini_28", in_chans=1, num_classes=10)
    assert 0.40e6 <= count_params(model) <= 0.50e6
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
