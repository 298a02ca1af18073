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

    def _cosine(self, features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """scale * cos(features, centres) without normalising the [.., D] features themselves
        (dividing the small [.., K] product by the norms is equivalent and far cheaper)."""
        norms = features.norm(dim=-1, keepdim=True) + 1e-9
        return self.scale * (features @ _normalize(centres).T) / norms

    def snippet_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._cosine(features.float(), self.centres.float())

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> BranchOutput:
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = features.float()
            centres = self.centres.float()
            # one product against the class centres and the foreground centre
            both = torch.cat([centres, self.fg_centre.float()])
            scores = self._cosine(z, both)  # [B, T, C+2]
            logits, fg = scores[..., :-1], scores[..., -1]
            valid = mask.to(z.dtype)
            attention = torch.sigmoid(fg) * valid
            class_att = torch.sigmoid(logits) * valid[..., None]
            weights = torch.cat([class_att, attention[..., None]], dim=-1)
            weights = weights / (weights.sum(1, keepdim=True) + 1e-5)
            pooled = torch.einsum("btk,btd->bkd", weights, z)  # [B, C+2, D]
            pooled_bg, pooled_fg = pooled[:, :-1], pooled[:, -1]
            video_fg = F.softmax(self._cosine(pooled_fg, centres), dim=-1)
            video_bg = F.softmax(self.scale * (_normalize(pooled_bg) * _normalize(centres)[None]).sum(-1), dim=-1)
        return BranchOutput(video_fg=video_fg, video_bg=video_bg, attention=attention, logits=logits)
