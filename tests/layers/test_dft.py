"""The global filter's real 2-d DFT written as cos/sin matrix products equals torch.fft's, in float64."""

import pytest
import torch

from vitlab.layers.dft import fft_for_counting, irfft2_channels_last, rfft2_channels_last


@pytest.mark.parametrize("size", [(7, 7), (14, 8), (5, 9), (2, 3), (1, 1)])
def test_transforms_equal_torch_fft_for_odd_even_and_non_square_maps(size):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *size, 3, generator=generator, dtype=torch.float64)
    spectrum = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
    re, im = rfft2_channels_last(x)
    torch.testing.assert_close(re, spectrum.real, rtol=0, atol=1e-12)
    torch.testing.assert_close(im, spectrum.imag, rtol=0, atol=1e-12)
    # A filtered half spectrum whose zero and Nyquist columns have imaginary parts, which irfft2 ignores.
    re, im = torch.randn(2, *re.shape, generator=generator, dtype=torch.float64)
    expected = torch.fft.irfft2(torch.complex(re, im), s=size, dim=(1, 2), norm="ortho")
    torch.testing.assert_close(irfft2_channels_last(re, im, size[1]), expected, rtol=0, atol=1e-12)


def test_counting_runs_torch_fft_with_the_same_values():
    x = torch.randn(1, 6, 5, 2, dtype=torch.float64)
    with fft_for_counting():
        counted = rfft2_channels_last(x)
    for a, b in zip(counted, rfft2_channels_last(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
