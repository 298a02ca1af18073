"""Saliency inference module (SIM): salient snippets from temporal feature differences."""

from __future__ import annotations

import torch

from issf.model.packing import Packing


def packed_differences(features: torch.Tensor, packing: Packing) -> torch.Tensor:
    """d_t = ||f_t - f_{t-1}||_1 for packed features [S, D], with a zero vector before each
    video's first snippet: [S]."""
    diff = features.new_empty(features.shape[0])
    if features.shape[0] == 0:
        return diff
    diff[1:] = (features[1:] - features[:-1]).abs_().sum(-1)  # rows that start a video are set below
    starts = torch.as_tensor([s for s, n in zip(packing.starts, packing.lengths) if n], device=features.device)
    diff[starts] = features[starts].abs().sum(-1)
    return diff


def temporal_difference(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padded version of :func:`packed_differences`: [B, T] with -inf at padding."""
    packing = Packing.from_mask(mask)
    return packing.pad(packed_differences(packing.pack(features.float()), packing), float("-inf"))


def select_salient(
    diff: torch.Tensor, mask: torch.Tensor, ratio: float, wrap_last: bool = True, skip_first: bool = False
) -> torch.Tensor:
    """Boolean [B, T] salient indicator b_t (docs/method.md, SIM) from differences [B, T].

    The K_b = max(floor(ratio * len_b) - 1, 0) snippets with the largest backward difference are
    selected, and each selected snippet marks itself and its predecessor. With ``wrap_last`` the
    predecessor of snippet 0 is the video's last valid snippet (the official index -1 wrap).
    Ranking uses a stable descending sort so ties resolve by position.
    """
    lengths = mask.sum(1)
    diff = diff.masked_fill(~mask, float("-inf"))
    if skip_first:
        diff[:, 0] = float("-inf")
    k = torch.clamp(torch.floor(lengths.double() * ratio).long() - 1, min=0)
    order = torch.argsort(diff, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(diff.shape[1], device=diff.device).expand_as(order))
    selected = (ranks < k[:, None]) & mask
    salient = selected.clone()
    salient[:, :-1] |= selected[:, 1:]
    if wrap_last:  # integer indices, no boolean selection of rows (no host synchronisation)
        rows = torch.arange(len(lengths), device=diff.device)
        last = (lengths - 1).clamp_(min=0)
        salient[rows, last] |= selected[:, 0]
    return salient & mask


def salient_mask(
    features: torch.Tensor, mask: torch.Tensor, ratio: float, wrap_last: bool = True, skip_first: bool = False
) -> torch.Tensor:
    """Salient indicator [B, T] of padded features [B, T, D] (see :func:`select_salient`)."""
    return select_salient(temporal_difference(features, mask), mask, ratio, wrap_last, skip_first)
