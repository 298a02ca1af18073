"""Videos of a right-padded batch packed back to back, so that no work is spent on padding.

The network's wide tensors ([snippets, D], D = 2048) live packed: video ``b`` owns the rows
``offsets[b]:offsets[b + 1]``. Only narrow per-snippet outputs (logits, attention) are padded
back to ``[B, T, ...]`` for the losses and the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    mask: torch.Tensor  # [B, T] valid snippets
    lengths: tuple[int, ...]  # valid snippets per video

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Packing:
        return cls(mask, tuple(mask.sum(1).tolist()))

    @property
    def starts(self) -> list[int]:
        """First row of every video (videos of length 0 included)."""
        return [first for first, _ in bounds(self.lengths)]

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [S, ...], S = total valid snippets."""
        return padded[self.mask]

    def pad(self, packed: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """[S, ...] -> [B, T, ...] with ``fill`` at padding (differentiable)."""
        out = packed.new_full((*self.mask.shape, *packed.shape[1:]), fill)
        out[self.mask] = packed
        return out

    def split(self, packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-video views of a packed tensor."""
        return packed.split(self.lengths)

    def repeat(self, per_video: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [S, ...]: each video's row repeated over its snippets."""
        lengths = torch.as_tensor(self.lengths, device=per_video.device)
        return per_video.repeat_interleave(lengths, dim=0)
