"""Visual Transformers (VT): each equation against a per-token / per-pixel transcription of the paper.

No official code exists, so the references here are the paper's equations (Wu et al. 2020), written
out unbatched in float64: one token, one pixel at a time, sums as explicit loops. Counts are the
model's against the paper's tables (see docs/vt.md for which configuration matches which figure).
"""

import pytest
import torch

import vitlab
from tests.helpers import max_rel_error
from vitlab.analysis.complexity import count_params
from vitlab.models.vt import Projector, Tokenizer, TokenTransformer, VTModule

TOLERANCE = 1e-8


@pytest.fixture(autouse=True)
def _float64_default():
    """Every module and tensor of these tests is float64, so the comparisons can ask for 1e-8."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def softmax(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """exp(s_i) / sum_j exp(s_j), written out (shifted by the maximum, which cancels)."""
    top = max(float(s) for s in scores)
    exps = [torch.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def naive_tokenizer(layer: Tokenizer, x: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """The filter-based / recurrent tokenizer for one image: x (HW, C), tokens (L, C_T) -> (L, C_T).

    Token l's filter is column l of W_A, or of W_R = T_in W_{T->R}; its weights over the pixels are
    softmax_HW of the filter's responses; the token is the weighted sum of the pixels (then W_V).
    """
    if layer.recurrent:
        w_tr = layer.token_to_filters.weight.T  # W_{T->R}: (C_T, C)
        filters = [sum(tokens[l, c] * w_tr[c] for c in range(tokens.shape[1])) for l in range(tokens.shape[0])]
    else:
        filters = list(layer.filters.weight)  # column l of W_A
    out = []
    for w in filters:
        weights = softmax([x[p] @ w for p in range(x.shape[0])])
        token = sum(a * x[p] for p, a in enumerate(weights))
        out.append(token if layer.value is None else token @ layer.value.weight.T)
    return torch.stack(out)


def naive_transformer(layer: TokenTransformer, t: torch.Tensor) -> torch.Tensor:
    """The transformer for one image: t (L, C_T); token i mixes every token j by softmax_j((t_i K) . (t_j Q))."""
    K, Q, F1, F2 = (m.weight.T for m in (layer.key, layer.query, layer.f1, layer.f2))
    out = []
    for i in range(t.shape[0]):
        weights = softmax([(t[i] @ K) @ (t[j] @ Q) for j in range(t.shape[0])])
        mixed = t[i] + sum(a * t[j] for j, a in enumerate(weights))
        out.append(mixed + torch.clamp(mixed @ F1, min=0) @ F2)
    return torch.stack(out)


def naive_projector(layer: Projector, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The projector for one image: pixel p adds the tokens weighted by softmax_l((x_p W_Q) . (t_l W_K))."""
    WQ, WK = layer.query.weight.T, layer.key.weight.T
    values = t if layer.value is None else t @ layer.value.weight.T
    out = []
    for p in range(x.shape[0]):
        weights = softmax([(x[p] @ WQ) @ (t[l] @ WK) for l in range(t.shape[0])])
        out.append(x[p] + sum(a * values[l] for l, a in enumerate(weights)))
    return torch.stack(out)


def pixels(fmap: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (HW, C), rows in raster order."""
    return fmap.flatten(1).T


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("dim, token_dim", [(6, 6), (6, 10)])  # C_T = C (the paper's equation) and C_T != C
def test_tokenizer_is_the_papers_equation(recurrent, dim, token_dim):
    torch.manual_seed(0)
    layer = Tokenizer(dim, token_dim, num_tokens=4, recurrent=recurrent)
    x, tokens = torch.randn(2, 15, dim), torch.randn(2, 4, token_dim)
    with torch.no_grad():
        out = layer(x, tokens)
        for b in range(2):
            assert max_rel_error(out[b], naive_tokenizer(layer, x[b], tokens[b])) < TOLERANCE


def test_transformer_is_the_papers_equations():
    torch.manual_seed(1)
    layer = TokenTransformer(token_dim=8, qk_dim=4)
    t = torch.randn(3, 5, 8)
    with torch.no_grad():
        out = layer(t)
        for b in range(3):
            assert max_rel_error(out[b], naive_transformer(layer, t[b])) < TOLERANCE


@pytest.mark.parametrize("dim, token_dim", [(6, 6), (6, 10)])
def test_projector_is_the_papers_equation(dim, token_dim):
    torch.manual_seed(2)
    layer = Projector(dim, token_dim, qk_dim=3)
    x, t = torch.randn(2, 12, dim), torch.randn(2, 4, token_dim)
    with torch.no_grad():
        out = layer(x, t)
        for b in range(2):
            assert max_rel_error(out[b], naive_projector(layer, x[b], t[b])) < TOLERANCE


def naive_vt_stage(modules, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VT modules in sequence on one image's (C, H, W) map: (last projector's map, last tokens)."""
    x, tokens = pixels(fmap), None
    for module in modules:
        tokens = naive_transformer(module.transformer, naive_tokenizer(module.tokenizer, x, tokens))
        x = naive_projector(module.projector, x, tokens)
    return x.T.reshape(fmap.shape), tokens


def test_model_is_the_trunk_then_the_transcribed_vt_modules_then_the_token_average():
    """A whole VT-ResNet (small widths, non-square input): logits and the VT stage's feature map."""
    torch.manual_seed(3)
    model = vitlab.create_model("vt_resnet18", width=4, layers=(1, 1, 1), vt_depth=3, num_tokens=5, token_dim=12)
    model.eval()
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        logits = model(x)
        *_, stage4, stage5 = model.forward_intermediates(x, (0, 1, 2, 3))
        for b in range(2):
            fmap, tokens = naive_vt_stage(model.layer4, stage4[b])
            assert max_rel_error(stage5[b], fmap) < TOLERANCE
            assert max_rel_error(logits[b], model.fc(tokens.mean(0))) < TOLERANCE
    assert stage4.shape[-2:] == stage5.shape[-2:] == (3, 4)  # the VT stage keeps stage 4's stride 16


def test_tokenizer_map_is_a_distribution_over_pixels_and_is_what_the_tokens_pool():
    torch.manual_seed(4)
    model = vitlab.create_model("vt_resnet18", **vitlab.registry.get_entry("vt_resnet18").tiny).eval()
    x = torch.randn(2, 3, 50, 70)
    with torch.no_grad(), vitlab.capture_attention(model) as maps:
        model(x)
        stage4 = model.forward_intermediates(x, (2,))[0]
    assert set(maps) == {f"layer4.{i}.{part}" for i in range(2) for part in ("tokenizer", "transformer", "projector")}
    probs = maps["layer4.0.tokenizer"][0]  # (batch, 1 head, L tokens, HW pixels)
    assert probs.shape == (2, 1, 4, 4 * 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 1, 4))  # each token's weights over the pixels sum to 1
    filters = model.layer4[0].tokenizer.filters.weight.detach()
    for b in range(2):
        for l in range(4):
            expected = softmax([pixels(stage4[b])[p] @ filters[l] for p in range(20)])
            assert max_rel_error(probs[b, 0, l], torch.stack(expected)) < TOLERANCE
    assert maps["layer4.1.transformer"][0].shape == (2, 1, 4, 4)  # tokens over tokens
    assert maps["layer4.1.projector"][0].shape == (2, 1, 20, 4)  # pixels over tokens


def test_recurrent_tokenizer_needs_the_previous_tokens():
    module = VTModule(8, 8, 4, recurrent=True, token_qk_dim=4, proj_qk_dim=4)
    with pytest.raises(ValueError, match="previous module's tokens"):
        module(torch.randn(1, 8, 3, 3))


def vt_params(depth: int, c: int, ct: int = 1024, L: int = 16) -> int:
    """Stage 5's parameters written out: filter module, recurrent modules, and the classifier.

    Transformer: K, Q (C_T x C_T/2), F1, F2 (C_T x C_T). Tokenizer: W_A (C x L) or W_{T->R} (C_T x C),
    plus W_V (C x C_T) when C != C_T. Projector: W_Q (C x C/2), W_K (C_T x C/2), plus W_V' (C_T x C)
    when C != C_T. Classifier: C_T x 1000 and 1000 biases.
    """
    transformer = 2 * ct * ct // 2 + 2 * ct * ct
    widen = (c * ct) * (c != ct)
    projector = c * c // 2 + ct * c // 2 + widen
    first = c * L + widen + transformer + projector
    recurrent = ct * c + widen + transformer + projector
    return first + (depth - 1) * recurrent + ct * 1000 + 1000


# The ResNet trunk VT keeps: torchvision's ResNet-18/34/50/101 (11,689,512 / 21,797,672 / 25,557,032 /
# 44,549,160 parameters, torchvision 0.29.1) less layer4 and fc.
TRUNK = {"vt_resnet18": 2_782_784, "vt_resnet34": 8_170_304, "vt_resnet50": 8_543_296, "vt_resnet101": 27_535_424}
CONFIG = {"vt_resnet18": (2, 256), "vt_resnet34": (3, 256), "vt_resnet50": (3, 1024), "vt_resnet101": (3, 1024)}
# Millions, to 2 decimals, as registered (C_T = 1024, L = 16). The paper: VT-R18 11.6M (Table 2) and
# 11.7M (Table 8, which ours matches); VT-R34 21.8M (Table 2: exactly plain ResNet-34's count) and
# 19.2M (Table 8); VT-R50 21.4M; VT-R101 41.5M (Table 8). docs/vt.md discusses the differences.
PARAMS = {"vt_resnet18": 11.74, "vt_resnet34": 21.23, "vt_resnet50": 24.26, "vt_resnet101": 43.26}
# GMACs at 224 x 224 (the paper's "FLOPs" are multiply-accumulates: its ResNet-18, 1814M, is
# torchvision's 1.814 GMACs). Paper, Table 8: VT-R18 1.569, VT-R34 3.236, VT-R50 3.412, VT-R101 7.129.
GMACS = {"vt_resnet18": 1.55, "vt_resnet34": 3.24, "vt_resnet50": 3.83, "vt_resnet101": 7.54}


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_counts(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    params = count_params(model)
    assert params == TRUNK[name] + vt_params(*CONFIG[name])
    assert round(params / 1e6, 2) == PARAMS[name]


def test_vt_resnet18_matches_table_8():
    with torch.device("meta"):
        assert round(count_params(vitlab.create_model("vt_resnet18")) / 1e6, 1) == 11.7


@pytest.mark.parametrize("name", GMACS)
def test_macs(name):
    assert round(vitlab.model_info(name)["gmacs"], 2) == GMACS[name]


def test_a_checkpoint_of_another_variant_is_refused_with_the_keys_named():
    tiny = vitlab.registry.get_entry("vt_resnet18").tiny
    basic = vitlab.create_model("vt_resnet18", **tiny).state_dict()
    with pytest.raises(vitlab.checkpoint.CheckpointError, match=r"missing keys.*layer1\.0\.conv3\.weight"):
        vitlab.checkpoint.load_state_dict(vitlab.create_model("vt_resnet50", **tiny), basic)
    wider = vitlab.create_model("vt_resnet18", **{**tiny, "token_dim": 32})
    with pytest.raises(vitlab.checkpoint.CheckpointError, match=r"layer4\.0\.transformer\.f1\.weight \(checkpoint"):
        vitlab.checkpoint.load_state_dict(wider, basic)
