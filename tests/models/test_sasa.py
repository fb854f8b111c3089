import pytest
import torch
import torch.nn.functional as F

import vitlab
from tests.helpers import max_rel_error
from vitlab.models.sasa import LocalSelfAttention

# SASA paper, Table 1, "conv-stem + attention": parameters (M) and FLOPS (= 2 x multiply-adds, B).
PAPER = {"sasa_resnet26": (10.3, 4.5), "sasa_resnet38": (14.1, 5.7), "sasa_resnet50": (18.0, 7.0)}


def naive_local_attention(layer: LocalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """SASA eq. 3, pixel by pixel and head by head, in float64, the window clipped to the image.

    y_ij = sum_{a,b in N_k(i,j)} softmax_ab(q_ij . k_ab + q_ij . r_{a-i,b-j}) v_ab, where head n's
    r concatenates its slices of the row-offset and column-offset embeddings.
    """
    x = x.double()
    q, k, v = (F.conv2d(x, proj.weight.double()) for proj in (layer.query, layer.key, layer.value))
    B, C, H, W = q.shape
    heads, d, half = layer.num_heads, layer.head_dim, layer.kernel_size // 2
    rows = layer.emb_row.double().view(layer.kernel_size, heads, d // 2)
    cols = layer.emb_col.double().view(layer.kernel_size, heads, d // 2)
    y = torch.zeros(B, C, H, W, dtype=torch.float64)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                for n in range(heads):
                    ch = slice(n * d, (n + 1) * d)
                    logits, values = [], []
                    for a in range(max(0, i - half), min(H, i + half + 1)):
                        for c in range(max(0, j - half), min(W, j + half + 1)):
                            r = torch.cat([rows[a - i + half, n], cols[c - j + half, n]])
                            logits.append(q[b, ch, i, j] @ k[b, ch, a, c] + q[b, ch, i, j] @ r)
                            values.append(v[b, ch, a, c])
                    y[b, ch, i, j] = torch.stack(logits).softmax(0) @ torch.stack(values)
    return y


@pytest.mark.parametrize(
    "channels, kernel_size, heads, size",
    [(16, 3, 2, (5, 6)), (16, 7, 4, (5, 6)), (8, 5, 1, (4, 9))],  # k = 7 > the map: every pixel near a border
)
def test_layer_is_the_papers_equation(channels, kernel_size, heads, size):
    layer = LocalSelfAttention(12, channels, kernel_size, heads)
    x = torch.randn(2, 12, *size)
    with torch.no_grad():
        assert max_rel_error(layer(x), naive_local_attention(layer, x)) < 1e-4


def test_stride_two_pools_the_attention_output_rounding_up():
    layer = LocalSelfAttention(8, 8, 3, 2, stride=2)
    x = torch.randn(1, 8, 5, 7)
    with torch.no_grad():
        y = layer(x)
        full = naive_local_attention(layer, x)
    assert y.shape == (1, 8, 3, 4)
    assert max_rel_error(y[..., :2, :3], F.avg_pool2d(full, 2)) < 1e-4
    assert max_rel_error(y[..., 2, 3], full[..., 4, 6]) < 1e-4  # the odd corner is pooled on its own


def test_positions_outside_the_image_get_no_attention():
    layer = LocalSelfAttention(8, 8, 7, 2)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad(), vitlab.capture_attention(layer) as maps:
        layer(x)
    probs = maps[""][0]
    assert probs.shape == (36, 2, 1, 49)  # (batch * pixels, heads, one query, k x k keys)
    torch.testing.assert_close(probs.sum(-1), torch.ones(36, 2, 1))
    assert (probs[0] > 0).sum(-1).tolist() == [[16], [16]]  # corner pixel: a 4 x 4 part of its window
    assert (probs[2 * 6 + 3] > 0).sum(-1).tolist() == [[36], [36]]  # 6 x 6: the whole map


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        LocalSelfAttention(16, 16, kernel_size=4)
    with pytest.raises(ValueError, match="out_planes 12 must split into 8 heads"):
        LocalSelfAttention(8, 12)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        LocalSelfAttention(16, 16, stride=3)


@pytest.mark.parametrize("name", PAPER)
def test_counts_match_table_1(name):
    """Parameters to the paper's 0.1M (its figures are truncated: 10.34M, 14.19M, 18.04M here).

    FLOPS: the paper counts q.k and q.r as two products; here the keys carry r (q.(k + r), one
    product), so that product is added back, one multiply-add per channel, window position and pixel.
    """
    params, flops = PAPER[name]
    info = vitlab.model_info(name)
    assert int(info["params"] / 1e5) == round(params * 10)
    with torch.device("meta"):
        model = vitlab.create_model(name).eval()
    relative_logits = []
    for m in model.modules():
        if isinstance(m, LocalSelfAttention):
            m.register_forward_hook(
                lambda m, inputs, _: relative_logits.append(
                    inputs[0].shape[-2] * inputs[0].shape[-1] * m.kernel_size**2 * m.query.out_channels
                )
            )
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224, device="meta"))
    assert round(2 * (info["gmacs"] + sum(relative_logits) / 1e9), 1) == flops


def small(**kwargs):
    config = dict(layers=(1, 1, 1, 1), num_heads=4, kernel_size=3, num_classes=5)
    config.update(kwargs)
    return vitlab.create_model("sasa_resnet26", **config).eval()


@pytest.mark.parametrize("size", [(32, 32), (29, 35), (7, 5)])
def test_any_input_size_and_features(size):
    model = small()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 5)
        extractor = vitlab.create_model("sasa_resnet26", features_only=True, layers=(1, 1, 1, 1), kernel_size=3)
        maps = extractor.eval()(x)
    h, w = -(-size[0] // 4), -(-size[1] // 4)
    for feature, channels in zip(maps, (256, 512, 1024, 2048), strict=True):
        assert feature.shape == (1, channels, h, w)
        h, w = -(-h // 2), -(-w // 2)


def test_resnet_layout_and_capture():
    model = small()
    state = model.state_dict()
    for key in ["conv1.weight", "layer1.0.attn.query.weight", "layer2.0.attn.emb_row", "layer3.0.downsample.1.weight"]:
        assert key in state, key
    assert state["layer2.0.attn.emb_col"].shape == (3, 128 // 2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), vitlab.capture_attention(model) as maps:
        model(x)
    assert set(maps) == {f"layer{i}.0.attn" for i in range(1, 5)}
    assert maps["layer2.0.attn"][0].shape == (8 * 8, 4, 1, 9)  # stride-2 block attends before pooling
    with pytest.raises(ValueError, match="4 stages"):
        small(layers=(1, 1))
