"""Information interaction unit (IIU) of the boundary refinement module (BRM)."""

from __future__ import annotations

import torch
from torch import nn

from issf.model.packing import Packing, bounds


class PackedAttention(torch.autograd.Function):
    """out_t = weight * sum_j softmax_j(q_t . k_j) k_j, video by video, on packed rows.

    Queries [S, D] hold the videos back to back (``lengths`` rows each) and keys [M, D] each
    video's key set back to back (``counts`` rows each); a video without keys gets zeros (the
    official empty softmax). The unscaled dot products of 2048-d features are large and make the
    attention nearly hard, so it runs in fp32 (float64 stays float64), also under autocast.
    Outputs and gradients are written straight into packed buffers, so no per-video pieces are
    concatenated (each concatenation is a pass over an [S, 2048] tensor).
    """

    @staticmethod
    def forward(ctx, queries, keys, lengths, counts, weight):  # noqa: ANN001, ANN205
        dtype = torch.promote_types(queries.dtype, torch.float32)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            q, k = queries.to(dtype), keys.to(dtype)
            out = q.new_empty(q.shape[0], k.shape[1])
            probs = []
            for (r0, r1), (k0, k1) in zip(bounds(lengths), bounds(counts)):
                if k1 == k0 or weight == 0.0:
                    out[r0:r1].zero_()
                    probs.append(None)
                    continue
                a = torch.softmax(q[r0:r1] @ k[k0:k1].T, dim=-1)
                if weight != 1.0:
                    a.mul_(weight)
                torch.mm(a, k[k0:k1], out=out[r0:r1])
                probs.append(a)
        ctx.save_for_backward(q, k)
        ctx.probs, ctx.weight = probs, weight
        ctx.bounds = list(zip(bounds(lengths), bounds(counts)))
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        q, k = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device_type=q.device.type, enabled=False):
            g = grad_out.to(q.dtype).contiguous()
            grad_q = torch.empty_like(q) if need_q else None
            grad_k = torch.empty_like(k) if need_k else None
            for ((r0, r1), (k0, k1)), a in zip(ctx.bounds, ctx.probs):
                if a is None:
                    if need_q:
                        grad_q[r0:r1].zero_()
                    if need_k:
                        grad_k[k0:k1].zero_()
                    continue
                keys = k[k0:k1]
                if need_k:  # value path: a^T g
                    torch.mm(a.T, g[r0:r1], out=grad_k[k0:k1])
                # logits path, a = weight * softmax(l): dl = a * (da - sum_j(a * da) / weight)
                grad_logits = (g[r0:r1] @ keys.T).mul_(a)
                grad_logits.sub_(a * (grad_logits.sum(-1, keepdim=True) / ctx.weight))
                if need_q:
                    torch.mm(grad_logits, keys, out=grad_q[r0:r1])
                if need_k:
                    grad_k[k0:k1].addmm_(grad_logits.T, q[r0:r1])
        return grad_q, grad_k, None, None, None


def packed_attention(
    queries: torch.Tensor, keys: torch.Tensor, lengths: tuple[int, ...], counts: tuple[int, ...], weight: float = 1.0
) -> torch.Tensor:
    """See :class:`PackedAttention`."""
    return PackedAttention.apply(queries, keys, tuple(lengths), tuple(counts), float(weight))


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

    def forward(
        self, features: torch.Tensor, member: torch.Tensor, packing: Packing, weight: float = 1.0,
        counts: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Refined packed features [S, D], times ``weight``: every snippet attends over the members
        ([B, T] bool) of its video's set. The gate runs once on all members of the batch; the
        attention runs video by video, so that its quadratic cost is never spent on padding.
        ``counts``: members per video, when the caller has read them to the host already."""
        if counts is None:
            counts = tuple(member.sum(1).tolist())
        # a boolean index would read the member count from the device; the count is known here
        rows = torch.nonzero_static(packing.pack(member), size=sum(counts)).flatten()
        keys = self.enhance(features.index_select(0, rows))
        return packed_attention(features, keys, packing.lengths, counts, weight)
