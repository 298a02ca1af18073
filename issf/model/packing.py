"""Videos of a right-padded batch packed back to back, so that no work is spent on padding.

The network's wide tensors ([snippets, D], D = 2048) live packed: video ``b`` owns the rows
``offsets[b]:offsets[b + 1]``. Only narrow per-snippet outputs (logits, attention) are padded
back to ``[B, T, ...]`` for the losses and the evaluation.

Packing and padding gather and scatter through integer row indices built on the host from the
video lengths, never through boolean masks: a boolean index makes the device report how many rows
it selected, a host synchronisation on accelerators (docs/framework.md, "Host synchronisations").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def bounds(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """(first, end) row of each block of a packed tensor holding blocks of ``sizes`` rows."""
    out, row = [], 0
    for n in sizes:
        out.append((row, row + n))
        row += n
    return out


@dataclass(frozen=True)
class Packing:
    mask: torch.Tensor  # [B, T] valid snippets (right-padded: the first lengths[b] of row b)
    lengths: tuple[int, ...]  # valid snippets per video
    rows: torch.Tensor  # [S] position b * T + t of every packed row in the flattened [B * T] batch
    videos: torch.Tensor  # [S] video of every packed row

    @classmethod
    def from_mask(cls, mask: torch.Tensor, lengths: Sequence[int] | None = None) -> Packing:
        """Packing of a right-padded batch. ``lengths`` (host integers, e.g. from the data loader)
        spares the one host synchronisation of reading them from the device mask."""
        device = mask.device
        if lengths is None:  # any mask, read from the device
            counts = mask.sum(1)
            rows = torch.nonzero(mask.flatten()).flatten()
            videos = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
            return cls(mask, tuple(counts.tolist()), rows, videos)
        lengths = tuple(int(n) for n in lengths)
        videos = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # host arithmetic
        starts = np.cumsum((0, *lengths), dtype=np.int64)[:-1]
        rows = videos * mask.shape[1] + (np.arange(len(videos), dtype=np.int64) - np.repeat(starts, lengths))
        return cls(mask, lengths, torch.from_numpy(rows).to(device, non_blocking=True),
                   torch.from_numpy(videos).to(device, non_blocking=True))

    @property
    def starts(self) -> list[int]:
        """First row of every video (videos of length 0 included)."""
        return [first for first, _ in bounds(self.lengths)]

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [S, ...], S = total valid snippets."""
        return padded.flatten(0, 1).index_select(0, self.rows)

    def pad(self, packed: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """[S, ...] -> [B, T, ...] with ``fill`` at padding (differentiable)."""
        out = packed.new_full((self.mask.numel(), *packed.shape[1:]), fill)
        return out.index_copy(0, self.rows, packed).view(*self.mask.shape, *packed.shape[1:])

    def split(self, packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-video views of a packed tensor."""
        return packed.split(self.lengths)

    def repeat(self, per_video: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [S, ...]: each video's row repeated over its snippets."""
        return per_video.index_select(0, self.videos)
