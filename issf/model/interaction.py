"""Information interaction unit (IIU) of the boundary refinement module (BRM)."""

from __future__ import annotations

import torch
from torch import nn


def masked_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """softmax_j(q_t . k_j) v_j over the keys in ``key_mask``; an empty key set gives zeros.

    The unscaled dot products of 2048-d features are large and make the attention nearly hard, so
    logits and softmax are computed in fp32 even under autocast; only the weighted sum may run in
    the autocast dtype.
    """
    with torch.autocast(device_type=queries.device.type, enabled=False):
        logits = torch.matmul(queries.float(), keys.float().transpose(1, 2))
        logits = logits.masked_fill(~key_mask[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.matmul(weights, values)


def gather_set(features: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Members of a snippet set packed to the front, in temporal order: [B, N, D] and a [B, N] mask,
    N = largest set in the batch (at least 1). Attention then costs T x N instead of T x T."""
    counts = member.sum(1)
    size = max(int(counts.max()), 1) if member.numel() else 1
    order = torch.argsort((~member).to(torch.uint8), dim=1, stable=True)[:, :size]
    packed = torch.gather(features, 1, order[..., None].expand(-1, -1, features.shape[-1]))
    return packed, torch.arange(size, device=member.device)[None] < counts[:, None]


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

    def forward(self, features: torch.Tensor, member: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Refined features [B, T, D]: every snippet attends over the members of its video's set.

        The channel gate runs batched on the packed set members; the attention runs video by video
        so that its quadratic cost is never spent on padding (lengths in a batch can differ a lot).
        """
        keys, key_mask = gather_set(features, member)
        enhanced = self.enhance(keys)
        if lengths is None:
            return masked_attention(features, enhanced, enhanced, key_mask)
        counts = key_mask.sum(1).tolist()
        # unbind (not indexing) so that each video's backward touches only its own rows
        rows = []
        for query, key, length, count in zip(features.unbind(0), enhanced.unbind(0), lengths.tolist(), counts):
            if count == 0:  # empty set: zero output, as the official empty softmax
                rows.append(query.new_zeros(query.shape[0], key.shape[-1]))
                continue
            weights = torch.softmax(_fp32_logits(query[:length], key[:count]), dim=-1)
            refined = weights @ key[:count]  # in the autocast dtype when autocast is on
            rows.append(torch.nn.functional.pad(refined, (0, 0, 0, query.shape[0] - length)))
        return torch.stack(rows)


def _fp32_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=queries.device.type, enabled=False):
        return torch.matmul(queries.float(), keys.float().T)
