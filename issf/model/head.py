"""Shared classification head (RSKP's cosine head) used by every ISSF branch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-9)


@dataclass
class BranchOutput:
    """Outputs of the head for one branch, batched over videos."""

    video_fg: torch.Tensor  # [B, C+1] class-agnostic pooled prediction p^ca (softmax)
    video_bg: torch.Tensor  # [B, C+1] class-wise pooled prediction p^cw (softmax)
    attention: torch.Tensor  # [B, T] class-agnostic attention a_t (0 at padding)
    logits: torch.Tensor  # [B, T, C+1] snippet logits S (TCAM)


class ClassificationHead(nn.Module):
    """Cosine classifier against class centres (incl. background, last) and a foreground centre.

    All computations run in fp32 (also under autocast) because the scale makes logits large.
    """

    def __init__(self, dim: int, num_classes: int, scale: float):
        super().__init__()
        self.scale = scale
        self.centres = nn.Parameter(torch.empty(num_classes + 1, dim))
        nn.init.xavier_uniform_(self.centres)
        self.fg_centre = nn.Parameter(-self.centres.detach()[-1:].clone())

    def snippet_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * _normalize(features.float()) @ _normalize(self.centres.float()).T

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> BranchOutput:
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = features.float()
            zn = _normalize(z)
            centres = _normalize(self.centres.float())
            logits = self.scale * zn @ centres.T  # [B, T, C+1]
            valid = mask.to(z.dtype)
            attention = torch.sigmoid(self.scale * zn @ _normalize(self.fg_centre.float()).T).squeeze(-1) * valid
            class_att = torch.sigmoid(logits) * valid[..., None]
            att_norm = attention / (attention.sum(1, keepdim=True) + 1e-5)
            class_norm = class_att / (class_att.sum(1, keepdim=True) + 1e-5)
            pooled_fg = torch.einsum("bt,btd->bd", att_norm, z)
            pooled_bg = torch.einsum("btk,btd->bkd", class_norm, z)
            video_fg = F.softmax(self.scale * _normalize(pooled_fg) @ centres.T, dim=-1)
            video_bg = F.softmax(self.scale * (_normalize(pooled_bg) * centres[None]).sum(-1), dim=-1)
        return BranchOutput(video_fg=video_fg, video_bg=video_bg, attention=attention, logits=logits)
