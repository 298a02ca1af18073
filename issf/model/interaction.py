"""Information interaction unit (IIU) of the boundary refinement module (BRM)."""

from __future__ import annotations

import torch
from torch import nn

from issf.model.packing import Packing


def attend(queries: torch.Tensor, keys: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """weight * softmax_j(q_t . k_j) k_j for one video; an empty key set gives zeros (the official
    empty softmax). The mixing ``weight`` scales the small [T, N] attention matrix, not the output.

    The unscaled dot products of 2048-d features are large and make the attention nearly hard, so
    logits and softmax are computed in fp32 even under autocast; only the weighted sum may run in
    the autocast dtype.
    """
    if keys.shape[0] == 0:
        return queries.new_zeros(queries.shape[0], keys.shape[-1])
    with torch.autocast(device_type=queries.device.type, enabled=False):
        weights = torch.softmax(torch.matmul(queries.float(), keys.float().T), dim=-1)
    if weight != 1.0:
        weights = weights * weight
    return weights @ keys


class InteractionUnit(nn.Module):
    """Channel-wise gate f_hat = f + softmax_c(W2 ReLU(W1 f)) * f, then cross-attention of every
    snippet (raw feature as query, unscaled dot product) over the snippets of one set."""

    def __init__(self, dim: int, reduce: int = 4, channel: bool = True):
        super().__init__()
        self.channel = channel
        if channel:
            self.mlp = nn.Sequential(
                nn.Linear(dim, dim // reduce, bias=False), nn.ReLU(), nn.Linear(dim // reduce, dim, bias=False)
            )

    def enhance(self, features: torch.Tensor) -> torch.Tensor:
        if not self.channel:
            return features
        return features + torch.softmax(self.mlp(features).float(), dim=-1).to(features.dtype) * features

    def forward(self, features: torch.Tensor, member: torch.Tensor, packing: Packing, weight: float = 1.0) -> torch.Tensor:
        """Refined packed features [S, D], times ``weight``: every snippet attends over the members
        ([B, T] bool) of its video's set. The gate runs once on all members of the batch; the attention runs video
        by video on views, so that its quadratic cost is never spent on padding."""
        keys = self.enhance(features[packing.pack(member)])
        rows = [attend(q, k, weight) for q, k in zip(packing.split(features), keys.split(member.sum(1).tolist()))]
        return torch.cat(rows)
