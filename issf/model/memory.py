"""Discrimination enhancement memory (DEM): per-class slots of salient snippet-features."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def ema_momentum(epoch: int, schedule_epochs: int) -> float:
    """m = 0.5 * ln(exp(t / E) + 1) (about 0.35 at t = 0, 0.48 at t = 85 of 180, 0.66 at t = E)."""
    return 0.5 * math.log(math.exp(epoch / schedule_epochs) + 1.0)


class SalientMemory(nn.Module):
    """Memory M [C, N, D] with scores Q [C, N], kept as buffers so checkpoints carry it.

    ``update`` pools the stored slots of a class with new candidate features, keeps the N with the
    highest class score (stable order), and after ``ema_epoch`` blends rank-aligned slots
    (M <- m M + (1 - m) TopN) while replacing the scores, as the official code does (B12).
    """

    def __init__(self, num_classes: int, slots: int, dim: int, ema_epoch: int = 85, schedule_epochs: int = 180):
        super().__init__()
        self.ema_epoch = ema_epoch
        self.schedule_epochs = schedule_epochs
        self.register_buffer("slots", torch.zeros(num_classes, slots, dim))
        self.register_buffer("scores", torch.zeros(num_classes, slots))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._known_initialized = False  # host copy once true (is_initialized)

    def read(self, classes: Sequence[int]) -> torch.Tensor:
        """Keys [len(classes) * N, D] of the given classes (detached)."""
        idx = torch.as_tensor(list(classes), dtype=torch.long, device=self.slots.device)
        return self.slots[idx].reshape(-1, self.slots.shape[-1]).detach()

    @torch.no_grad()
    def update(
        self, features: torch.Tensor, class_scores: torch.Tensor, classes: Sequence[int], epoch: int,
        member: torch.Tensor | None = None,
    ) -> None:
        """Insert candidates ``features`` [n, D] into each row ``c`` of ``classes``, ranked by
        their score column ``class_scores[:, c]`` ([n, >= c + 1]).

        ``member`` ([n] bool) marks the rows that are candidates; the others rank last (score
        -inf) and never displace a slot, since the N stored slots always rank above them. The
        result equals inserting ``features[member]`` (stable order), without the boolean
        selection's host synchronisation on accelerators.
        """
        if member is None and features.shape[0] == 0:
            return
        features = features.detach().to(self.slots.dtype)
        class_scores = class_scores.detach().to(self.scores.dtype)
        n = self.slots.shape[1]
        any_member = None if member is None else member.any()
        for c in classes:
            column = class_scores[:, c]
            if member is not None:
                column = column.masked_fill(~member, float("-inf"))
            pool_feat = torch.cat([self.slots[c], features])
            pool_score = torch.cat([self.scores[c], column])
            top = torch.argsort(pool_score, descending=True, stable=True)[:n]
            if epoch > self.ema_epoch:
                m = ema_momentum(epoch, self.schedule_epochs)
                slots = m * self.slots[c] + (1.0 - m) * pool_feat[top]
            else:
                slots = pool_feat[top]
            scores = pool_score[top]
            if any_member is not None:  # no candidate: the row stays as it was (no EMA of itself)
                slots = torch.where(any_member, slots, self.slots[c])
                scores = torch.where(any_member, scores, self.scores[c])
            self.slots[c] = slots
            self.scores[c] = scores

    def is_initialized(self) -> bool:
        """Whether the initialisation pass has filled the memory. Once true, answered on the host
        (``initialized`` only ever turns true in a run), so training steps do not read it from the device."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self._known_initialized = False  # a loaded state may be uninitialised
        super()._load_from_state_dict(*args, **kwargs)
