"""The 2-d real discrete Fourier transform of a channels-last map, written as products with cos/sin matrices.

GFNet's global filter (HorNet's gnConv with global filters) is irfft2(rfft2(x) * W). Written with
`torch.fft` it cannot be exported by torch.onnx's TorchScript exporter (no symbolic for fft_rfft2)
and it holds complex tensors, which ONNX graphs do not. Here both transforms are sums over the
pixels with the DFT's cos/sin matrices, built for the size at hand from integer index products
(angle 2 pi (j k mod n) / n, reduced exactly before it becomes a float, then cos/sin in float64), so
they are exact to rounding in float64 and trace into Range/Mod/Cos/Sin nodes whose size follows the
input. Real and imaginary parts are carried as two real tensors. On HorNet-T GF the training step
(forward and backward at 224x224) measured the same speed as with torch.fft (docs/export.md).

Scaling is the "ortho" one (1/sqrt(H W) each way), as HorNet's official code calls torch.fft.

Counting multiply-accumulates, papers charge an FFT's N log2 N per transform, not the matrix
products' cost: `analysis.complexity.count_macs` runs under `fft_for_counting()`, in which these
functions call torch.fft (same values), whose ops the counter charges by that rule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

_COUNTING = {"fft": False}


@contextlib.contextmanager
def fft_for_counting() -> Iterator[None]:
    """Compute the transforms with torch.fft inside the block (for counting MACs the way papers do)."""
    saved, _COUNTING["fft"] = _COUNTING["fft"], True
    try:
        yield
    finally:
        _COUNTING["fft"] = saved


def dft_matrices(n: int, m: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of 2 pi j k / n for j < n, k < m, as (n, m) matrices of `like`'s dtype and device."""
    j = torch.arange(n, device=like.device)
    k = torch.arange(m, device=like.device)
    angle = (j[:, None] * k[None, :] % n).to(torch.float64) * (2 * math.pi / n)
    return angle.cos().to(like.dtype), angle.sin().to(like.dtype)


def rfft2_channels_last(x: Tensor) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of `torch.fft.rfft2(x, dim=(1, 2), norm="ortho")` for a real (B, H, W, C) map:
    two (B, H, W // 2 + 1, C) tensors."""
    if _COUNTING["fft"]:
        spectrum = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
        return spectrum.real, spectrum.imag
    height, width = x.shape[1], x.shape[2]
    cos_w, sin_w = dft_matrices(width, width // 2 + 1, x)
    cos_h, sin_h = dft_matrices(height, height, x)  # symmetric
    re = torch.einsum("bhwc,wv->bhvc", x, cos_w)  # e^{-i t} = cos t - i sin t
    im = -torch.einsum("bhwc,wv->bhvc", x, sin_w)
    rows = lambda m, t: torch.einsum("hu,bhvc->buvc", m, t)  # noqa: E731
    scale = (height * width) ** -0.5
    return (rows(cos_h, re) + rows(sin_h, im)) * scale, (rows(cos_h, im) - rows(sin_h, re)) * scale


def irfft2_channels_last(re: Tensor, im: Tensor, width: int) -> Tensor:
    """`torch.fft.irfft2(re + i im, s=(H, width), dim=(1, 2), norm="ortho")` of a (B, H, width // 2 + 1, C)
    half spectrum: the real (B, H, width, C) map. As irfft2 does, the imaginary parts of the zero and
    (even `width`) Nyquist columns are ignored; the other columns count twice (their mirror images)."""
    if _COUNTING["fft"]:
        return torch.fft.irfft2(torch.complex(re, im), s=(re.shape[1], width), dim=(1, 2), norm="ortho")
    height, half = re.shape[1], re.shape[2]
    cos_h, sin_h = dft_matrices(height, height, re)
    rows = lambda m, t: torch.einsum("hu,bhvc->buvc", m, t)  # noqa: E731
    re, im = rows(cos_h, re) - rows(sin_h, im), rows(cos_h, im) + rows(sin_h, re)  # e^{+i t}
    cos_w, sin_w = dft_matrices(width, half, re)
    column = torch.arange(half, device=re.device)
    twice = torch.where((column == 0) | (2 * column == width), 1.0, 2.0).to(re.dtype)
    out = torch.einsum("bhvc,wv->bhwc", re, cos_w * twice) - torch.einsum("bhvc,wv->bhwc", im, sin_w * twice)
    return out * (height * width) ** -0.5
