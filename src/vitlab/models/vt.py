"""Visual Transformers, VT (Wu et al. 2020, "Visual Transformers: Token-based Image Representation and
Processing for Computer Vision"): a ResNet whose stage 5 works on a few visual tokens.

A VT module reads a feature map X (HW x C pixels) and, except for the first, the tokens T_in of the
module before it (L x C_T), and computes, as the paper's equations write them:

    tokenizer, filter-based (first module)   T = softmax_HW(X W_A)^T X
    tokenizer, recurrent (the others)        W_R = T_in W_{T->R};  T = softmax_HW(X W_R)^T X
    transformer                              T' = T + softmax_L((T K)(T Q)^T) T
                                             T_out = T' + ReLU(T' F1) F2
    projector                                X_out = X + softmax_L((X W_Q)(T_out W_K)^T) T_out

Softmax_HW normalises over the pixels for each token (what each visual token looks at); softmax_L
over the tokens. There is no value projection in the transformer, no 1/sqrt(d) scaling, no norm
and no bias anywhere, because the equations have none. VT-ResNet-{18,34,50,101} keep the ResNet's
stem and stages 2-4 (a 14 x 14 map at 224 x 224, C = 256 or 1024) and replace stage 5 by {2,3,3,3}
VT modules on L = 16 tokens; the classifier averages the last module's tokens and applies a linear
layer (the paper's classification set-up).

The paper leaves open, and we chose:
- the tokens' channel size C_T = 1024 for every variant (`token_dim`). Where C_T != C (VT-R18/34),
  the tokenizer maps the pooled tokens to C_T with W_V (C x C_T), T = softmax_HW(X W_A)^T X W_V,
  and the projector maps the tokens back to C with W_V' (C_T x C); where C_T = C there is neither
  and the equations are exactly the paper's;
- the width of the transformer's K, Q (C_T x C_T/2, `token_qk_dim`) and of the projector's W_Q,
  W_K (C x C/2 and C_T x C/2, `projector_qk_dim`);
- every module, the last one too, has its projector, and every forward pass runs it: its output is
  the map `features_only` gives for the VT stage (stride 16, C channels). The classifier reads
  only the last module's tokens, so the last projector's weights train only through dense tasks
  (and its attention is recorded like the others');
- initialisation (PyTorch's defaults for the VT matrices, torchvision's for the ResNet).

With these, VT-R18 has 11.74M parameters (the paper: 11.7M in Table 8, 11.6M in Table 2) and VT-R34
21.23M: the paper's 21.8M (Table 2) is plain ResNet-34's own count and its 19.2M (Table 8) is not
reached by this configuration, nor are VT-R50's 21.4M and VT-R101's 41.5M (docs/vt.md).

There is no official code and no published checkpoint: parameter names are vitlab's own (the ResNet
trunk keeps torchvision's). Parity is tested against per-token, per-pixel transcriptions of the
equations (tests/models/test_vt.py, and the fixtures of tools/fixtures/vt.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vitlab.layers.attention import AttentionLayer, attend
from vitlab.models.resnet import ConvStemResNet
from vitlab.registry import Preprocess, register_model


class Tokenizer(AttentionLayer):
    """Visual tokens from a map: T = softmax_HW(X W)^T X (W_V), W = W_A or W_R = (T_in W_{T->R})^T.

    Filter-based when `recurrent` is False: `filters` is W_A, one C-dim filter per token.
    Recurrent: `token_to_filters` is W_{T->R} (C_T x C), turning the previous module's
    tokens into this module's filters. The spatial attention (batch, 1, L tokens, HW pixels), rows
    summing to 1 over the pixels, is what `capture_attention` records.
    """

    def __init__(self, dim: int, token_dim: int, num_tokens: int, recurrent: bool):
        super().__init__()
        self.recurrent = recurrent
        if recurrent:
            self.token_to_filters = nn.Linear(token_dim, dim, bias=False)
        else:
            self.filters = nn.Linear(dim, num_tokens, bias=False)
        self.value = nn.Linear(dim, token_dim, bias=False) if token_dim != dim else None

    def forward(self, x: Tensor, tokens: Tensor | None) -> Tensor:
        """x: (B, HW, C) pixels, tokens: (B, L, C_T) or None -> (B, L, C_T)."""
        if self.recurrent:
            if tokens is None:
                raise ValueError("a recurrent tokenizer needs the previous module's tokens")
            filters = self.token_to_filters(tokens)  # W_R^T: (B, L, C)
        else:
            filters = self.filters.weight.expand(x.shape[0], -1, -1)  # W_A^T: (B, L, C)
        pixels = x.unsqueeze(1)
        tokens = attend(filters.unsqueeze(1), pixels, pixels, scale=1.0, store=self.attention_store).squeeze(1)
        return tokens if self.value is None else self.value(tokens)


class TokenTransformer(AttentionLayer):
    """The transformer: T' = T + softmax_L((T K)(T Q)^T) T, T_out = T' + ReLU(T' F1) F2 (one head, no scaling).

    Row i of (T K)(T Q)^T holds token i's scores against every token j; the softmax normalises
    each row over j, so token i receives a convex combination of the tokens. `key` is K and
    `query` Q, the paper's names (K plays the query's role of Vaswani et al.).
    """

    def __init__(self, token_dim: int, qk_dim: int):
        super().__init__()
        self.key = nn.Linear(token_dim, qk_dim, bias=False)
        self.query = nn.Linear(token_dim, qk_dim, bias=False)
        self.f1 = nn.Linear(token_dim, token_dim, bias=False)
        self.f2 = nn.Linear(token_dim, token_dim, bias=False)
        self.act = nn.ReLU()

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.unsqueeze(1)
        tokens = tokens + attend(self.key(t), self.query(t), t, scale=1.0, store=self.attention_store).squeeze(1)
        return tokens + self.f2(self.act(self.f1(tokens)))


class Projector(AttentionLayer):
    """The projector: X_out = X + softmax_L((X W_Q)(T W_K)^T) T (W_V'): each pixel reads the tokens.

    `value` (W_V', C_T x C) exists only where the tokens are wider than the map (our choice).
    """

    def __init__(self, dim: int, token_dim: int, qk_dim: int):
        super().__init__()
        self.query = nn.Linear(dim, qk_dim, bias=False)
        self.key = nn.Linear(token_dim, qk_dim, bias=False)
        self.value = nn.Linear(token_dim, dim, bias=False) if token_dim != dim else None

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        """x: (B, HW, C), tokens: (B, L, C_T) -> (B, HW, C)."""
        values = tokens if self.value is None else self.value(tokens)
        q, k, v = self.query(x).unsqueeze(1), self.key(tokens).unsqueeze(1), values.unsqueeze(1)
        return x + attend(q, k, v, scale=1.0, store=self.attention_store).squeeze(1)


class VTModule(nn.Module):
    """Tokenizer, transformer, projector: (map X_in, tokens T_in) -> (map X_out, tokens T_out)."""

    def __init__(self, dim: int, token_dim: int, num_tokens: int, recurrent: bool, token_qk_dim: int, proj_qk_dim: int):
        super().__init__()
        self.tokenizer = Tokenizer(dim, token_dim, num_tokens, recurrent)
        self.transformer = TokenTransformer(token_dim, token_qk_dim)
        self.projector = Projector(dim, token_dim, proj_qk_dim)

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, C, H, W); tokens: (B, L, C_T), None for the first module."""
        B, C, H, W = x.shape
        pixels = x.flatten(2).transpose(1, 2)
        tokens = self.transformer(self.tokenizer(pixels, tokens))
        return self.projector(pixels, tokens).transpose(1, 2).reshape(B, C, H, W), tokens


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions (He et al. 2016), torchvision's names."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """ResNet's 1x1-3x3-1x1 bottleneck, stride on the 3x3 (torchvision's "ResNet v1.5"), its names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _shortcut(inplanes: int, out: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class VTResNet(ConvStemResNet):
    """VT-ResNet: the ResNet stem and stages 2-4 (`layer1`..`layer3`), then VT modules (`layer4`).

    `block` is "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101), `layers` the depths of
    stages 2-4, `vt_depth` the number of VT modules (the first filter-based, the others
    recurrent), `width` the stem's channels (64). `forward_features` returns the last module's
    tokens (batch, L, C_T); the head averages them and classifies. `features_only` gives the maps
    of stages 2-4 (strides 4, 8, 16) and the last projector's output (stride 16: the VT stage
    keeps stage 4's resolution). No parameter depends on the input size.
    """

    feature_format = "NLC"

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2),
        vt_depth: int = 2,
        num_tokens: int = 16,
        token_dim: int = 1024,
        token_qk_dim: int | None = None,
        projector_qk_dim: int | None = None,
        width: int = 64,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        img_size: int | tuple[int, int] | None = None,
    ):
        super().__init__(in_chans, width, num_classes, img_size)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {tuple(BLOCKS)}, got {block!r}")
        if len(layers) != 3 or vt_depth < 1:
            raise ValueError(f"VT-ResNet has 3 ResNet stages and >= 1 VT module, got {tuple(layers)}, {vt_depth}")
        block_cls, inplanes = BLOCKS[block], width
        for i, depth in enumerate(layers):
            planes = width * 2**i
            blocks = [block_cls(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * block_cls.expansion
            blocks += [block_cls(inplanes, planes) for _ in range(1, depth)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        qk_dim = token_qk_dim or token_dim // 2
        proj_qk_dim = projector_qk_dim or inplanes // 2
        self.layer4 = nn.ModuleList(
            VTModule(inplanes, token_dim, num_tokens, i > 0, qk_dim, proj_qk_dim) for i in range(vt_depth)
        )
        self.feature_info = [
            dict(num_chs=width * 2**i * block_cls.expansion, reduction=4 * 2**i, module=f"layer{i + 1}")
            for i in range(3)
        ] + [dict(num_chs=inplanes, reduction=16, module="layer4")]
        self.default_out_indices = (0, 1, 2, 3)
        self.num_features = token_dim
        self.head_drop = nn.Dropout(drop_rate)
        self.add_classifier("fc", token_dim)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=1))  # average over the visual tokens
        return x if pre_logits else self.fc(x)

    def layers(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def run_vt_modules(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 5: (map, tokens) through every VT module, checkpointed when asked."""
        tokens = None
        use_checkpoint = self.grad_checkpointing and torch.is_grad_enabled()
        for module in self.layer4:
            if use_checkpoint:
                x, tokens = checkpoint(module, x, tokens, use_reentrant=False)
            else:
                x, tokens = module(x, tokens)
        return x, tokens

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        x = self.stem(x)
        for layer in self.layers():
            x = self.run_blocks(layer, x)
            yield x
        yield self.run_vt_modules(x)[0]

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers():
            x = self.run_blocks(layer, x)
        return self.run_vt_modules(x)[1]

    def blocks_in_depth_order(self) -> list[nn.Module]:
        return [block for layer in self.layers() for block in layer] + list(self.layer4)


_REFERENCE = (
    "Wu et al. 2020, Visual Transformers (arXiv 2006.03677): no official code or checkpoint; "
    "vitlab's own layout, tested against per-token transcriptions of the paper's equations"
)
_TINY = dict(width=8, layers=(1, 1, 1), vt_depth=2, num_tokens=4, token_dim=16)
for _depth, _block, _layers, _vt_depth in [
    (18, "basic", (2, 2, 2), 2),
    (34, "basic", (3, 4, 6), 3),
    (50, "bottleneck", (3, 4, 6), 3),
    (101, "bottleneck", (3, 4, 23), 3),
]:
    register_model(
        f"vt_resnet{_depth}",
        VTResNet,
        dict(block=_block, layers=_layers, vt_depth=_vt_depth),
        _REFERENCE,
        tiny=_TINY,
        preprocess=Preprocess((3, 224, 224)),
    )
