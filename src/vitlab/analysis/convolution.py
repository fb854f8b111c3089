"""Self-attention can express convolution (Cordonnier, Loukas and Jaggi 2020), made concrete.

Theorem 1 of the paper: a multi-head self-attention layer with N_h = K^2 heads of width at least
C_out and a relative position encoding can express any K x K convolution. The construction
(section 3.2, "quadratic encoding"): head h attends from query q to key k with the logit

    A_qk^(h) = -alpha (||delta||^2 - 2 <delta, Delta_h>),   delta = k - q   (eq. 9)

i.e. v^(h) . r_delta with v^(h) = -alpha (1, -2 Delta_h) and r_delta = (||delta||^2, delta). The
softmax peaks at delta = Delta_h (the logit is -alpha ||delta - Delta_h||^2 up to a constant), and as
alpha grows head h attends to the single pixel q + Delta_h. With Delta_h running over the K^2
offsets of the kernel, W_val^(h) the kernel's tap at Delta_h and W_out summing the heads (Lemma 1),
the layer's output is the convolution.

`QuadraticEncodingAttention.from_convolution(conv, alpha)` builds that layer from an `nn.Conv2d`
(stride 1, odd square kernel, zero padding K // 2, no dilation or groups). The keys are the map
zero-padded by K // 2, as the convolution pads: at the border a head then lands on a zero pixel,
exactly where the convolution multiplies by zero (the paper leaves the border aside). With alpha =
1000 in float64, every other key gets exp(-1000) = 0, so the outputs agree to rounding.
The attention runs through `attend()`, so `capture_attention` records each head's one-hot map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers.attention import AttentionLayer, attend


class QuadraticEncodingAttention(AttentionLayer):
    """Multi-head self-attention on an NCHW map whose logits are the quadratic relative encoding alone.

    `shifts` (N_h, 2) are the heads' centres of attention Delta_h as (dy, dx); `alpha` their
    sharpness. `value` (N_h, C_in, C_head) and `out` (N_h * C_head -> C_out) are W_val and W_out.
    Content terms (q . k) are left out, as in the construction; `pad` zero-pads the keys.
    """

    def __init__(self, shifts: Tensor, alpha: float, in_dim: int, head_dim: int, out_dim: int, pad: int):
        super().__init__()
        self.register_buffer("shifts", shifts.clone().float())
        self.alpha = alpha
        self.pad = pad
        self.value = nn.Parameter(torch.zeros(len(shifts), in_dim, head_dim))
        self.out = nn.Linear(len(shifts) * head_dim, out_dim)

    def logits(self, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
        """(N_h, H * W, H' * W') logits -alpha (||delta||^2 - 2 <delta, Delta_h>) against the padded keys."""
        H, W = size
        p = self.pad
        qy, qx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        ky, kx = torch.meshgrid(torch.arange(-p, H + p), torch.arange(-p, W + p), indexing="ij")
        dy = (ky.reshape(1, -1) - qy.reshape(-1, 1)).to(dtype)
        dx = (kx.reshape(1, -1) - qx.reshape(-1, 1)).to(dtype)
        shifts = self.shifts.to(dtype)
        inner = dy * shifts[:, 0, None, None] + dx * shifts[:, 1, None, None]
        return -self.alpha * ((dy**2 + dx**2) - 2 * inner)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        keys = F.pad(x, (self.pad,) * 4).flatten(2).transpose(1, 2)  # (B, H' W', C), zeros at the border
        v = torch.einsum("bnc,hcd->bhnd", keys, self.value.to(x.dtype))
        heads = v.shape[1]
        q = x.new_zeros(B, heads, H * W, 1)
        k = x.new_zeros(B, heads, keys.shape[1], 1)
        y = attend(q, k, v, bias=self.logits((H, W), x.dtype).unsqueeze(0), store=self.attention_store)
        y = self.out(y.transpose(1, 2).reshape(B, H * W, -1))
        return y.transpose(1, 2).reshape(B, -1, H, W)

    @classmethod
    def from_convolution(cls, conv: nn.Conv2d, alpha: float = 1000.0) -> QuadraticEncodingAttention:
        """The layer that computes `conv` (Lemma 1 with the quadratic encoding): K^2 heads of width C_out."""
        K = conv.kernel_size[0]
        if (
            conv.kernel_size != (K, K) or K % 2 == 0 or conv.stride != (1, 1) or conv.dilation != (1, 1)
            or conv.groups != 1 or conv.padding != (K // 2, K // 2) or conv.padding_mode != "zeros"
        ):  # fmt: skip
            raise ValueError(f"the construction covers stride-1, odd square, 'same'-padded convolutions, got {conv}")
        c = K // 2
        offsets = [(dy, dx) for dy in range(-c, c + 1) for dx in range(-c, c + 1)]
        layer = cls(torch.tensor(offsets), alpha, conv.in_channels, conv.out_channels, conv.out_channels, c)
        layer = layer.to(conv.weight.dtype)
        with torch.no_grad():
            for h, (dy, dx) in enumerate(offsets):
                layer.value[h] = conv.weight[:, :, dy + c, dx + c].T  # W_val^(h) W_out^(h) = the tap at Delta_h
            layer.out.weight.copy_(torch.eye(conv.out_channels, dtype=conv.weight.dtype).repeat(1, len(offsets)))
            layer.out.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(layer.out.bias))
        return layer
