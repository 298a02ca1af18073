"""Snippet embedding: Linear -> ReLU -> Dropout, as in RSKP/ISSF."""

from __future__ import annotations

import torch
from torch import nn


class Embedding(nn.Module):
    """Returns both the pre-dropout and the post-dropout embedding (saliency may use either)."""

    def __init__(self, input_dim: int, embed_dim: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(input_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.linear(x))
        return hidden, self.dropout(hidden)
