"""`vitlab.fold_for_inference`: BatchNorm and LayerScale folded away, the function unchanged.

Each model is compared with itself unfolded, in float64, with BatchNorm statistics and affine
parameters and LayerScale gains set away from their initial values (so that a fold that forgot the
mean, the variance, eps or the gain would show), and must have no BatchNorm or LayerScale left
where every one follows a convolution or a Linear directly.
"""

import re

import pytest
import torch
from torch import nn

import vitlab
from vitlab.fold import fold_for_inference
from vitlab.layers.drop import LayerScale
from vitlab.registry import get_entry

# Models with conv-BN stems or blocks, one per family that has them, and a ViT with LayerScale; with the
# norms that must stay: those after attention (SASA's bn2, Axial-DeepLab's norms of similarities and
# outputs), and SETR's auxiliary heads, which run only in training mode.
CASES = {
    "sasa_resnet26": ({}, r"layer\d\.\d+\.bn2"),
    "axial26s": ({}, r".*_block\.bn_(similarity|output)"),
    "vt_resnet18": ({}, None),
    "ceit_tiny_patch16_224": ({}, None),
    "vitc_tiny_s4_32": ({}, None),
    "convnet_tiny": ({}, None),
    "vit_small_patch16_224": ({"init_values": 1e-5}, None),
    "segformer_b0": ({}, None),
    "setr_pup_vit_large_768": ({}, r"auxiliary_head\..*"),
}
FOLDED_AWAY = (nn.modules.batchnorm._BatchNorm, LayerScale)


def randomised(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    model = vitlab.create_model(name, **{**get_entry(name).tiny, **overrides}).double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            elif isinstance(module, LayerScale):
                module.gamma.copy_(torch.rand(module.gamma.shape, generator=generator) + 0.5)
    return model


def logits(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


@pytest.mark.parametrize("name", list(CASES))
def test_folded_model_computes_the_same_function(name):
    overrides, may_stay = CASES[name]
    model = randomised(name, **overrides)
    assert any(isinstance(m, FOLDED_AWAY) for m in model.modules())
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    folded = fold_for_inference(model, x)
    with torch.no_grad():
        expected = logits(model(x))
        # Another input and size than the one folding was traced on.
        y = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        assert torch.allclose(logits(folded(y)), logits(model(y)), rtol=0, atol=1e-10 * logits(model(y)).abs().max())
        actual = logits(folded(x))
    assert ((actual - expected).abs().max() / expected.abs().max()).item() < 1e-10
    left = [n for n, m in folded.named_modules() if isinstance(m, FOLDED_AWAY)]
    assert all(may_stay and re.fullmatch(may_stay, n) for n in left), left
    assert len(folded.folded) > 0
    assert any(isinstance(m, FOLDED_AWAY) for m in model.modules()), "the original must be left untouched"


class ResidualAroundNorm(nn.Module):
    """A convolution whose output feeds a BatchNorm and, outside any module, a residual sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.bn.running_mean.fill_(0.5)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_refuses_when_the_convolution_output_is_used_elsewhere():
    with pytest.raises(RuntimeError, match="folding changed the output of ResidualAroundNorm"):
        fold_for_inference(ResidualAroundNorm().double(), torch.randn(1, 3, 8, 8, dtype=torch.float64))


def test_training_mode_batch_norm_is_not_folded_into_the_caller_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    folded = fold_for_inference(model, torch.randn(1, 3, 8, 8))
    assert model.training and isinstance(model[1], nn.BatchNorm2d)
    assert not folded.training and isinstance(folded[1], nn.Identity) and folded[0].bias is not None
