"""ISSF losses, computed per video (shape [B]) so that the batch loss can be a sum over videos."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nce(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Normalised cross-entropy -sum_k (l_k / sum l) log p_k per video; log input clamped."""
    targets = targets / targets.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(targets * torch.log(probs.clamp_min(1e-12))).sum(-1)


def video_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground target [y, 0] and background target [y, 1] over C+1 classes."""
    zeros = torch.zeros_like(labels[:, :1])
    return torch.cat([labels, zeros], -1), torch.cat([labels, zeros + 1], -1)


def attention_loss(attention: torch.Tensor, mask: torch.Tensor, ratio: float = 8.0) -> torch.Tensor:
    """mean(k smallest a_t) - mean(k largest a_t), k = max(len // ratio, 1), padding excluded."""
    lengths = mask.sum(1)
    k = torch.clamp(torch.div(lengths, ratio, rounding_mode="floor").long(), min=1)
    positions = torch.arange(attention.shape[1], device=attention.device)[None]
    take = (positions < k[:, None]).to(attention.dtype)
    top = torch.sort(attention.masked_fill(~mask, float("-inf")), dim=1, descending=True).values
    bottom = torch.sort(attention.masked_fill(~mask, float("inf")), dim=1).values
    top = torch.where(take.bool(), top, torch.zeros_like(top))
    bottom = torch.where(take.bool(), bottom, torch.zeros_like(bottom))
    return (bottom.sum(1) - top.sum(1)) / k


def pseudo_label_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over valid snippets of CE(softmax(teacher / tau) [detached], softmax(student / tau))."""
    target = F.softmax(teacher.detach().float() / tau, dim=-1)
    ce = -(target * F.log_softmax(student.float() / tau, dim=-1)).sum(-1)
    valid = mask.to(ce.dtype)
    return (ce * valid).sum(1) / valid.sum(1).clamp_min(1)
