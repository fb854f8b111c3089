"""Losses: soft-target cross entropy, DeiT distillation, patch diversification.

DeiT (Touvron et al. 2021, section 4) trains a student against a teacher's logits z_t:
- soft:  (1 - alpha) CE(z_s, y) + alpha tau^2 KL(softmax(z_t / tau) || softmax(z_s / tau)),
         the KL summed and divided by the number of logits (B x C), as the official code does;
- hard:  (1 - alpha) CE(z_s, y) + alpha CE(z_s_dist, argmax z_t)  (the paper's eq. with alpha = 1/2).
With a distillation token, CE(., y) is applied to the class head and the distillation term to
the distillation head.

Patch diversification (Gong et al. 2021, section 3) adds, on the last layer's patch tokens h^L:
- patch-wise cosine: mean over i != j of |cos(h_i^L, h_j^L)|;
- patch-wise contrastive: InfoNCE that matches h_i^L with the first layer's h_i^1 (no gradient
  through h^1) against the other patches h_j^1, on cosine similarities with temperature tau;
- patch-wise mixing: with CutMix snapped to the patch grid, each patch token is classified by a
  linear head into the class of the image it was cut from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of -sum_c targets_c log softmax(logits)_c (targets are distributions)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def soft_distillation(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """tau^2 KL(softmax(teacher / tau) || softmax(student / tau)), summed and divided by B x C."""
    log_s = F.log_softmax(student.float() / tau, dim=-1)
    log_t = F.log_softmax(teacher.float() / tau, dim=-1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) * (tau * tau) / student.numel()


def hard_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """Cross entropy against the teacher's decision argmax z_t."""
    return F.cross_entropy(student.float(), teacher.argmax(dim=-1))


class DistillationLoss(nn.Module):
    """(1 - alpha) base(class head) + alpha distill(distillation head, teacher)."""

    def __init__(self, kind: str, alpha: float = 0.5, tau: float = 1.0):
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"distillation must be 'soft' or 'hard', got {kind!r}")
        self.kind, self.alpha, self.tau = kind, alpha, tau

    def forward(self, outputs: Tensor | tuple[Tensor, Tensor], targets: Tensor, teacher_logits: Tensor) -> Tensor:
        cls_logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        base = soft_target_cross_entropy(cls_logits, targets)
        if self.kind == "soft":
            distill = soft_distillation(dist_logits, teacher_logits, self.tau)
        else:
            distill = hard_distillation(dist_logits, teacher_logits)
        return (1 - self.alpha) * base + self.alpha * distill


def patch_cosine_loss(patches: Tensor) -> Tensor:
    """Mean |cos(h_i, h_j)| over pairs i != j of the patch tokens (B, N, D), averaged over the batch."""
    h = F.normalize(patches.float(), dim=-1)
    cos = (h @ h.transpose(1, 2)).abs()
    n = h.shape[1]
    off_diagonal = cos.sum(dim=(1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(dim=1)
    return (off_diagonal / (n * (n - 1))).mean()


def patch_contrastive_loss(last: Tensor, first: Tensor, tau: float = 1.0) -> Tensor:
    """-1/N sum_i log( exp(c_ii / tau) / sum_j exp(c_ij / tau) ), c_ij = cos(h_i^L, stopgrad(h_j^1))."""
    h_last = F.normalize(last.float(), dim=-1)
    h_first = F.normalize(first.detach().float(), dim=-1)
    logits = h_last @ h_first.transpose(1, 2) / tau  # (B, N, N): row i scores patch i against every h_j^1
    target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


class PatchMixingLoss(nn.Module):
    """A linear classifier shared by all patch tokens, trained on each patch's source-image target."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, patches: Tensor, patch_targets: Tensor) -> Tensor:
        """patches (B, N, D), patch_targets (B, N, C) soft targets."""
        logits = self.head(patches).float()
        return soft_target_cross_entropy(logits.flatten(0, 1), patch_targets.flatten(0, 1))
