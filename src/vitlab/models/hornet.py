"""HorNet (Rao et al. 2022, "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions").

A four-stage convolutional pyramid (strides 4/8/16/32, widths C, 2C, 4C, 8C) of ConvNeXt-like
blocks whose spatial mixer is the *recursive gated convolution* g^n Conv (section 3.1, eq. 3.3-3.4):
a 1x1 projection gives p_0 (C_0 channels) and q_0..q_{n-1} (C_0 + ... + C_{n-1} channels, with
C_k = C / 2^(n-1-k)); one depthwise filter f mixes all the q_k at once, scaled by s (1/3 as
released); then p_{k+1} = g_k(p_k) * f_k(q_k) (g_k a 1x1 convolution widening C_k to C_{k+1}, g_0
the identity), and a last 1x1 projection. The order n grows with depth: 2, 3, 4, 5 by stage.
The filter f is a 7x7 depthwise convolution, or, in the GF variants' stages 3 and 4, the
global-local filter (section 3.3): a 3x3 depthwise convolution on one half of the channels and a
learned global filter (Rao et al. 2021, GFNet) on the other, rfft2 -> product with a complex
weight -> irfft2, between two LayerNorms.
Each block is x + gamma1 * gnConv(LN(x)), then x + gamma2 * MLP(LN(x)) (layer scale, init 1e-6).
The stem is a 4x4 stride-4 convolution + LN; between stages LN + a 2x2 stride-2 convolution. The
classifier reads LayerNorm(mean of the final map): the final norm comes *after* pooling.
`vitlab attention` draws the gating products p_1..p_n of a gnConv as maps (`vitlab.analysis.gates`).

The parameter layout is the official release's (raoyongming/HorNet, hornet.py), so its checkpoints
(`{'model': ...}` files) load as they are. HorNet has no softmax attention: `capture_attention`
refuses it as it refuses every model without attention layers.

Where we chose (the paper does not say):
- Maps are channels-last (B, H, W, C) between blocks, as in every vitlab pyramid; the LayerNorms
  and 1x1 projections run on them directly (as matrix products over C) and the depthwise
  convolutions see an NCHW view of the same memory, i.e. a channels-last convolution
  (docs/hornet.md has the timings that chose this).
- The global filter's complex weight is made for the map at `img_size` (h, w//2 + 1), as the
  official 224 (14x8, 7x4) and 384 (24x13, 12x7) variants are; at other sizes it is resized
  bilinearly with align_corners=True on every forward pass, exactly as the official code does, and a
  checkpoint made for another size is resized the same way when it is loaded.
- The FFT runs in the input's dtype, float32 at least (the official code casts to float32 for
  mixed precision, which would also narrow a float64 model); its result returns to the input dtype.
- Sides below 32 pixels (stride 32 with unpadded convolutions) are refused by name (`stem_stride`
  lowers it: `hornet_mini_28`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers import DropPath, drop_path_rates
from vitlab.layers.dft import irfft2_channels_last, rfft2_channels_last
from vitlab.models.pyramid import Pyramid
from vitlab.registry import Preprocess, register_model
from vitlab.weights import Weights


def nchw(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W) as a view: convolutions then run in channels-last memory."""
    return x.permute(0, 3, 1, 2)


def nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution (kept as Conv2d for the checkpoint's shapes) on a channels-last map."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def resize_complex_weight(weight: Tensor, size: tuple[int, int]) -> Tensor:
    """A (C, h, w, 2) global-filter weight resized to (C, *size, 2): bilinear, align_corners=True (official)."""
    if tuple(weight.shape[1:3]) == tuple(size):
        return weight
    resized = F.interpolate(weight.permute(3, 0, 1, 2), size=size, mode="bilinear", align_corners=True)
    return resized.permute(1, 2, 3, 0)


class GlobalLocalFilter(nn.Module):
    """Section 3.3: LN, then [3x3 depthwise conv | global filter] on the two channel halves, LN.

    The two halves' outputs are interleaved channel by channel (local 0, global 0, local 1, ...),
    as the official code stacks them, not concatenated.
    """

    def __init__(self, dim: int, size: tuple[int, int], eps: float = 1e-6):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the global-local filter splits its {dim} channels in half: they must be even")
        half = dim // 2
        self.dw = nn.Conv2d(half, half, kernel_size=3, padding=1, bias=False, groups=half)
        self.complex_weight = nn.Parameter(torch.empty(half, *size, 2))
        nn.init.trunc_normal_(self.complex_weight, std=0.02)
        self.pre_norm = nn.LayerNorm(dim, eps=eps)
        self.post_norm = nn.LayerNorm(dim, eps=eps)

    def global_filter(self, x: Tensor) -> Tensor:
        """irfft2(rfft2(x) * W) over (H, W) of a (B, H, W, C) map, orthonormal scaling (official).

        The transforms are `layers.dft`'s cos/sin products (exact to rounding, exportable to ONNX at
        any size) rather than torch.fft; in at least float32 and outside autocast, as torch.fft computes.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext():
            re, im = rfft2_channels_last(x.to(dtype))
            weight = resize_complex_weight(self.complex_weight.to(dtype), re.shape[1:3]).permute(3, 1, 2, 0)
            re, im = re * weight[0] - im * weight[1], re * weight[1] + im * weight[0]
            return irfft2_channels_last(re, im, x.shape[2]).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        local, glob = self.pre_norm(x).chunk(2, dim=-1)
        local = nhwc(self.dw(nchw(local)))
        glob = self.global_filter(glob)
        return self.post_norm(torch.stack([local, glob], dim=-1).flatten(-2))


class GnConv(nn.Module):
    """Recursive gated convolution of order n (eq. 3.3-3.4), on a (B, H, W, C) map.

    Official names: `proj_in`, `dwconv` (the 7x7 depthwise conv or a `GlobalLocalFilter`), `pws`
    (g_1..g_{n-1}), `proj_out`. When `gate_store` is a list (`vitlab.analysis.gates` sets it), each
    call hands it the gating products p_1..p_n (detached), which the analysis draws as maps.
    """

    gate_store: list[list[Tensor]] | None = None

    def __init__(
        self, dim: int, order: int, scale: float = 1 / 3, filter_size: tuple[int, int] | None = None, eps: float = 1e-6
    ):
        super().__init__()
        if dim % 2 ** (order - 1):
            raise ValueError(f"gnConv of order {order} halves {dim} channels {order - 1} times: it must divide")
        self.order = order
        self.dims = [dim // 2**k for k in reversed(range(order))]  # C_0 .. C_{n-1} = C
        self.scale = scale
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        total = sum(self.dims)
        if filter_size is None:
            self.dwconv: nn.Module = nn.Conv2d(total, total, kernel_size=7, padding=3, groups=total)
        else:
            self.dwconv = GlobalLocalFilter(total, filter_size, eps)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[k], self.dims[k + 1], 1) for k in range(order - 1))

    def spatial_filter(self, q: Tensor) -> Tensor:
        if isinstance(self.dwconv, GlobalLocalFilter):
            return self.dwconv(q)
        return nhwc(self.dwconv(nchw(q)))

    def forward(self, x: Tensor) -> Tensor:
        p, q = pointwise(self.proj_in, x).split([self.dims[0], sum(self.dims)], dim=-1)
        gates = (self.spatial_filter(q) * self.scale).split(self.dims, dim=-1)
        p = p * gates[0]
        products = [p] if self.gate_store is not None else None
        for g, gate in zip(self.pws, gates[1:], strict=True):
            p = pointwise(g, p) * gate
            if products is not None:
                products.append(p)
        if products is not None:
            self.gate_store.append([t.detach() for t in products])
        return pointwise(self.proj_out, p)


class HorNetBlock(nn.Module):
    """x + gamma1 * gnConv(LN(x)), then x + gamma2 * MLP(LN(x)) on a (B, H, W, C) map (official names)."""

    def __init__(
        self, dim: int, gnconv: GnConv, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6, eps: float = 1e-6
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.gnconv = gnconv
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)  # the MLP, under the official flat names
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.gamma1 * self.gnconv(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.pwconv2(self.act(self.pwconv1(self.norm2(x)))))


class Stem(nn.Sequential):
    """Official `downsample_layers.0`: a k x k stride-k convolution (`0`), then LN (`1`)."""

    def __init__(self, in_chans: int, dim: int, stride: int, eps: float):
        super().__init__(nn.Conv2d(in_chans, dim, kernel_size=stride, stride=stride), nn.LayerNorm(dim, eps=eps))

    def forward(self, x: Tensor) -> Tensor:
        return self[1](nhwc(self[0](x)))


class Downsample(nn.Sequential):
    """Official `downsample_layers.{1,2,3}`: LN (`0`), then a 2x2 stride-2 convolution (`1`), channels-last."""

    def __init__(self, in_dim: int, out_dim: int, eps: float):
        super().__init__(nn.LayerNorm(in_dim, eps=eps), nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2))

    def forward(self, x: Tensor) -> Tensor:
        return nhwc(self[1](nchw(self[0](x))))


class HorNet(Pyramid):
    """HorNet; `forward_features` returns the final map (B, H/32, W/32, 8C), *not* normalised.

    The official final LayerNorm acts on the pooled vector (`norm(x.mean((H, W)))`), which is not
    the mean of a normalised map, so it belongs to `forward_head`: pool, LN, dropout, classifier.
    `orders[i]` is the gnConv order of stage i; `global_filter[i]` gives stage i global-local
    filters (GF variants: stages 3 and 4) in place of the 7x7 depthwise convolutions.
    `stem_stride` (4 officially) is the stem's kernel and stride; the model needs sides of at least
    `stem_stride * 8` pixels.
    """

    input_conv = "downsample_layers.0.0.weight"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        base_dim: int = 64,
        depths: Sequence[int] = (2, 3, 18, 2),
        orders: Sequence[int] = (2, 3, 4, 5),
        global_filter: Sequence[bool] = (False, False, False, False),
        gnconv_scale: float = 1 / 3,
        stem_stride: int = 4,
        layer_scale_init_value: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__(in_chans, num_classes, img_size)
        if not len(depths) == len(orders) == len(global_filter) == 4 or min(depths) < 1:
            raise ValueError(
                f"depths, orders and global_filter need one entry per stage (4), depths at least 1; got {depths}, "
                f"{orders}, {global_filter}"
            )
        self.min_input_size = stem_stride * 8  # per model, not per class: the stem's stride is an argument
        dims = [base_dim * 2**i for i in range(4)]
        self.depths = tuple(depths)
        self.downsample_layers = nn.ModuleList([Stem(in_chans, dims[0], stem_stride, norm_eps)])
        self.downsample_layers.extend(Downsample(dims[i], dims[i + 1], norm_eps) for i in range(3))
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        self.stages = nn.ModuleList()
        for i in range(4):
            filter_size = self.filter_size(stem_stride * 2**i) if global_filter[i] else None
            gnconv = partial(GnConv, dims[i], orders[i], gnconv_scale, filter_size, norm_eps)
            try:
                blocks = [
                    HorNetBlock(dims[i], gnconv(), next(rates), layer_scale_init_value, norm_eps)
                    for _ in range(depths[i])
                ]
            except ValueError as err:  # say which argument made the channel count
                raise ValueError(f"stage {i + 1} (base_dim {base_dim} x {2**i}, order {orders[i]}): {err}") from err
            self.stages.append(nn.Sequential(*blocks))
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.set_feature_info(dims, [f"stages.{i}" for i in range(4)], first_stride=stem_stride)
        self.add_classifier("head", dims[-1])
        self._init_weights()

    def filter_size(self, stride: int) -> tuple[int, int]:
        """The global filter's (h, w // 2 + 1) for the map at `img_size` (14x8 and 7x4 at 224, as released)."""
        height, width = (max(1, side // stride) for side in self.img_size or (224, 224))
        return height, width // 2 + 1

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Official: truncated-normal (std 0.02) convolution and linear weights, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def embed(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.downsample_layers[0](x)

    def stage_parts(self) -> list[tuple[nn.Module | None, Sequence[nn.Module]]]:
        downsamples = [None, *self.downsample_layers[1:]]
        return list(zip(downsamples, self.stages, strict=True))

    def forward_features(self, x: Tensor) -> Tensor:
        for fmap in self.iter_stages(x):
            x = fmap
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.norm(x.mean(dim=(1, 2))))
        return x if pre_logits else self.head(x)

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        for fmap in self.iter_stages(x):
            yield nchw(fmap)

    def block_order(self) -> list[list[str]]:
        """As `Backbone.block_order`, with `downsample_layers.i` (i > 0) in the group of stage i's first block.

        The official names put every downsampling layer before the first stage; by position in
        the forward pass each belongs with the block that runs right after it.
        """
        groups = super().block_order()
        first = 1
        for i, depth in enumerate(self.depths):
            if i:
                prefix = f"downsample_layers.{i}."
                groups[first] = [n for n in groups[0] if n.startswith(prefix)] + groups[first]
                groups[0] = [n for n in groups[0] if not n.startswith(prefix)]
            first += depth
        return groups

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Global-filter weights made for another input size resized to this model's, as the forward pass would."""
        own = self.state_dict()
        adapted = dict(state_dict)
        for key, value in state_dict.items():
            same_channels = key in own and value.ndim == 4 and value.shape[::3] == own[key].shape[::3]
            if key.endswith("complex_weight") and same_channels and value.shape != own[key].shape:
                adapted[key] = resize_complex_weight(value, tuple(own[key].shape[1:3]))
        return adapted


_HORNET = "HorNet: Rao et al. 2022 (raoyongming/HorNet, hornet.py)"
_GF = (False, False, True, True)
# name: (base_dim, global_filter, README top-1 at 224 on ImageNet-1k; the Large ones: ImageNet-22k pre-trained)
_VARIANTS = {
    "hornet_tiny_7x7": (64, None, 82.8),
    "hornet_tiny_gf": (64, _GF, 83.0),
    "hornet_small_7x7": (96, None, 83.8),
    "hornet_small_gf": (96, _GF, 84.0),
    "hornet_base_7x7": (128, None, 84.2),
    "hornet_base_gf": (128, _GF, 84.3),
    "hornet_large_7x7": (192, None, None),
    "hornet_large_gf": (192, _GF, None),
}
# The README's ImageNet-1k release files (Tsinghua Cloud direct-download links). The Large ones are trained on
# ImageNet-22k with a class count the release does not state, so they are not listed.
_RELEASE = {
    "hornet_tiny_7x7": "bac9690c72944d19aca1",
    "hornet_tiny_gf": "460e759c82324ea6bfa3",
    "hornet_small_7x7": "8ef64277da0e469ea857",
    "hornet_small_gf": "959603ca287d4c09ad49",
    "hornet_base_7x7": "13a748487711492e9704",
    "hornet_base_gf": "c212d1d8a3914b47a5c1",
}


def _release(name: str, top1: float | None) -> list[Weights]:
    if name not in _RELEASE:
        return []
    url = f"https://cloud.tsinghua.edu.cn/f/{_RELEASE[name]}/?dl=1"
    return [Weights("in1k", url=url, filename=f"{name}.pth", layout="official", top1=top1, license="mit")]


for _name, (_dim, _gf, _top1) in _VARIANTS.items():
    register_model(
        _name,
        HorNet,
        dict(base_dim=_dim, depths=(2, 3, 18, 2), orders=(2, 3, 4, 5), **({"global_filter": _gf} if _gf else {})),
        f"{_HORNET}, {_name}",
        tiny=dict(base_dim=8, depths=(1, 1, 1, 1)),
        preprocess=Preprocess((3, 224, 224), crop_pct=0.875),
        paper=dict(top1=_top1) if _top1 else {},
        weights=_release(_name, _top1),
    )

register_model(
    "hornet_mini_28",
    HorNet,
    dict(img_size=28, in_chans=1, num_classes=10, base_dim=16, depths=(1, 1, 3, 1), orders=(2, 3, 4, 5), stem_stride=2),
    "vitlab's own configuration of HorNet (Rao et al. 2022) for 28x28 images (e.g. MNIST: in_chans=1, "
    "num_classes=10): a 2x2 stride-2 stem, widths 16-128, 7x7 gnConv of orders 2-5",
    tiny=dict(base_dim=8, depths=(1, 1, 1, 1)),
    preprocess=Preprocess((1, 28, 28), (0.5,), (0.5,), crop_pct=1.0),
)
