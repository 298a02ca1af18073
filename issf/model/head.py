"""Shared classification head (RSKP's cosine head) used by every ISSF branch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from issf.model.packing import Packing, bounds


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-9)


class ScaledCosine(torch.autograd.Function):
    """scale * (x . u_k) / (||x|| + 1e-9) of features x [N, D] against unit centres u [K, D].

    The features are never normalised themselves (dividing the small [N, K] product by the norms
    is equivalent), and the backward makes one pass over x instead of the four (norm backward,
    masked fill, product, sum of the two gradients) that autograd would spend on [N, 2048] tensors.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, unit: torch.Tensor, scale: float) -> torch.Tensor:
        norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        inv = scale / (norms + 1e-9)
        dots = x @ unit.T
        ctx.save_for_backward(x, unit, dots, norms, inv)
        return dots * inv

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, unit, dots, norms, inv = ctx.saved_tensors
        grad_dots = grad * inv  # [N, K]
        grad_x = grad_unit = None
        if ctx.needs_input_grad[0]:
            # d out_k / d ||x|| = -dots_k * inv / (||x|| + eps); d ||x|| / dx = x / ||x|| (0 at x = 0)
            grad_norms = -(grad_dots * dots).sum(-1, keepdim=True) / (norms + 1e-9)
            coef = torch.where(norms > 0, grad_norms / norms, 0.0)
            grad_x = (grad_dots @ unit).addcmul_(coef, x)
        if ctx.needs_input_grad[1]:
            grad_unit = grad_dots.reshape(-1, grad_dots.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        return grad_x, grad_unit, None


class PairedScaledCosine(torch.autograd.Function):
    """scale * (x_bk . u_k) / (||x_bk|| + 1e-9) of pooled features x [B, K, D], each against its
    own unit centre u_k ([K, D]): [B, K].

    With 200 classes x is [64, 201, 2048] at ActivityNet's batch size; this makes two passes over
    it forward and three backward, where autograd spends about fifteen on the equivalent
    normalise-multiply-sum expression (they dominated an ActivityNet-shaped training step).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, unit: torch.Tensor, scale: float) -> torch.Tensor:
        norms = torch.linalg.vector_norm(x, dim=-1)  # [B, K]
        dots = torch.bmm(x.transpose(0, 1), unit.unsqueeze(-1)).squeeze(-1).T  # [B, K]
        inv = scale / (norms + 1e-9)
        ctx.save_for_backward(x, unit, dots, norms, inv)
        return dots * inv

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, unit, dots, norms, inv = ctx.saved_tensors
        grad_dots = grad * inv  # [B, K]
        grad_x = grad_unit = None
        if ctx.needs_input_grad[0]:
            grad_norms = -(grad_dots * dots) / (norms + 1e-9)
            coef = torch.where(norms > 0, grad_norms / norms, 0.0)
            # unit expanded first: ``grad_dots[..., None] * unit`` takes a slow broadcasting path (7x)
            grad_x = (unit.expand_as(x) * grad_dots[..., None]).addcmul_(coef[..., None], x)
        if ctx.needs_input_grad[1]:
            grad_unit = torch.bmm(grad_dots.T.unsqueeze(1), x.transpose(0, 1)).squeeze(1)  # [K, D]
        return grad_x, grad_unit, None


class SegmentPool(torch.autograd.Function):
    """pooled[b] = weights_b^T features_b for packed videos (weights [S, K], features [S, D]):
    [B, K, D]. Gradients are written straight into packed buffers (no per-video concatenation)."""

    @staticmethod
    def forward(ctx, weights, features, lengths):  # noqa: ANN001, ANN205
        out = features.new_empty(len(lengths), weights.shape[1], features.shape[1])
        ctx.bounds = bounds(lengths)
        for b, (r0, r1) in enumerate(ctx.bounds):
            torch.mm(weights[r0:r1].T, features[r0:r1], out=out[b])
        ctx.save_for_backward(weights, features)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        weights, features = ctx.saved_tensors
        grad = grad.contiguous()
        grad_w = torch.empty_like(weights) if ctx.needs_input_grad[0] else None
        grad_f = torch.empty_like(features) if ctx.needs_input_grad[1] else None
        for b, (r0, r1) in enumerate(ctx.bounds):
            if grad_w is not None:
                torch.mm(features[r0:r1], grad[b].T, out=grad_w[r0:r1])
            if grad_f is not None:
                torch.mm(weights[r0:r1], grad[b], out=grad_f[r0:r1])
        return grad_w, grad_f, None


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
        return ScaledCosine.apply(features, _normalize(centres), self.scale)

    def snippet_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._cosine(features.float(), self.centres.float())

    def forward(self, features: torch.Tensor, packing: Packing) -> BranchOutput:
        """Head over packed features [S, D]; the outputs are padded per video."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = features.float()
            centres = self.centres.float()
            # one product against the class centres and the foreground centre
            both = torch.cat([centres, self.fg_centre.float()])
            scores = self._cosine(z, both)  # [S, C+2]
            logits = scores[:, :-1]
            gates = torch.sigmoid(scores)  # class-wise attention and (last) class-agnostic a_t
            sums = torch.stack([g.sum(0) for g in packing.split(gates)])  # [B, C+2]
            weights = gates / packing.repeat(sums + 1e-5)
            # two pools rather than slices of one: the backward of a slice fills and copies a
            # whole [B, C+2, D] gradient (B = 64 and C = 200 on ActivityNet)
            pooled_bg = SegmentPool.apply(weights[:, :-1], z, packing.lengths)  # [B, C+1, D]
            pooled_fg = SegmentPool.apply(weights[:, -1:], z, packing.lengths)[:, 0]  # [B, D]
            video_fg = F.softmax(self._cosine(pooled_fg, centres), dim=-1)
            video_bg = F.softmax(PairedScaledCosine.apply(pooled_bg, _normalize(centres), self.scale), dim=-1)
            attention = packing.pad(gates[:, -1])
        return BranchOutput(video_fg=video_fg, video_bg=video_bg, attention=attention, logits=packing.pad(logits))
