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
    """scale * (x . u_k) / (||x|| + 1e-9) of features x [N, D] against unit centres u [K, D], and
    the raw dot products x . u_k (both [N, K], both differentiable).

    The features are never normalised themselves (dividing the small [N, K] product by the norms
    is equivalent), and the backward makes one pass over x instead of the four (norm backward,
    masked fill, product, sum of the two gradients) that autograd would spend on [N, 2048] tensors.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, unit: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        inv = scale / (norms + 1e-9)
        dots = x @ unit.T
        ctx.save_for_backward(x, unit, dots, norms, inv)
        return dots * inv, dots

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, grad_raw: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, unit, dots, norms, inv = ctx.saved_tensors
        grad_dots = torch.zeros_like(dots) if grad is None else grad * inv  # [N, K]
        if grad_raw is not None:
            grad_dots = grad_dots + grad_raw
        grad_x = grad_unit = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_dots @ unit
            if grad is not None:
                # d out_k / d ||x|| = -dots_k * inv / (||x|| + eps); d ||x|| / dx = x / ||x|| (0 at x = 0)
                grad_norms = -(grad * inv * dots).sum(-1, keepdim=True) / (norms + 1e-9)
                grad_x.addcmul_(torch.where(norms > 0, grad_norms / norms, 0.0), x)
        if ctx.needs_input_grad[1]:
            grad_unit = grad_dots.reshape(-1, grad_dots.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        return grad_x, grad_unit, None


class HeadPooling(torch.autograd.Function):
    """The head's pooling over packed videos (weights [S, K + 1], features [S, D]): the norms of the
    class-wise pooled features, norms[b, k] = ||sum_t w_tk f_t|| for k < K ([B, K]), and the
    class-agnostic pooled feature sum_t w_tK f_t ([B, D]).

    The class-wise pooled features ([B, K, D], K = C + 1) are only ever used through their norms
    and their dot products with the class centres, and the dot products follow from the snippets'
    own (sum_t w_tk f_t . u_k). For a video of at most K snippets the norms come from its Gram
    matrix, ||F^T w_k||^2 = w_k^T (F F^T) w_k, which costs T^2 D instead of the T K D of pooling:
    with 200 classes and 75-snippet training videos, ~3x less work and no [B, C+1, D] tensor.
    Longer videos pool directly. One function for both outputs, so that the backward writes one
    [S, D] gradient instead of two that autograd then adds.
    """

    @staticmethod
    def forward(ctx, weights: torch.Tensor, features: torch.Tensor, lengths: tuple[int, ...]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        k = weights.shape[1] - 1
        norms = weights.new_empty(len(lengths), k)
        pooled = features.new_empty(len(lengths), features.shape[1])
        parts = []  # per video: G w [T, K] (Gram) or the class-wise pooled features [K, D]
        for b, (r0, r1) in enumerate(bounds(lengths)):
            w, f = weights[r0:r1, :k], features[r0:r1]
            torch.mv(f.T, weights[r0:r1, k], out=pooled[b])
            if r1 - r0 <= k:
                h = (f @ f.T) @ w
                norms[b] = (w * h).sum(0).clamp_(min=0.0).sqrt_()
                parts.append(h)
            else:
                p = w.T @ f
                norms[b] = torch.linalg.vector_norm(p, dim=-1)
                parts.append(p)
        ctx.save_for_backward(weights, features, norms)
        ctx.parts, ctx.bounds = parts, bounds(lengths)
        return norms, pooled

    @staticmethod
    def backward(ctx, grad_norms: torch.Tensor | None, grad_pooled: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        weights, features, norms = ctx.saved_tensors
        k = weights.shape[1] - 1
        if grad_norms is None:
            grad_norms = torch.zeros_like(norms)
        if grad_pooled is None:
            grad_pooled = features.new_zeros(len(ctx.bounds), features.shape[1])
        q = torch.where(norms > 0, grad_norms / norms, 0.0)  # d||p|| = p . dp / ||p|| (0 at p = 0)
        grad_w = torch.empty_like(weights) if ctx.needs_input_grad[0] else None
        grad_f = torch.empty_like(features) if ctx.needs_input_grad[1] else None
        for b, ((r0, r1), part) in enumerate(zip(ctx.bounds, ctx.parts)):
            w, f, w_agnostic = weights[r0:r1, :k], features[r0:r1], weights[r0:r1, k]
            if r1 - r0 <= k:  # part = G w: d/dw = G w q, d/dF = (w diag(q) w^T) F
                if grad_w is not None:
                    torch.mul(part, q[b], out=grad_w[r0:r1, :k])
                if grad_f is not None:
                    torch.mm((w * q[b]) @ w.T, f, out=grad_f[r0:r1])
            else:  # part = pooled p: dp = p q; d/dw = F dp^T, d/dF = w dp
                dp = part * q[b][:, None]
                if grad_w is not None:
                    torch.mm(f, dp.T, out=grad_w[r0:r1, :k])
                if grad_f is not None:
                    torch.mm(w, dp, out=grad_f[r0:r1])
            if grad_w is not None:
                torch.mv(f, grad_pooled[b], out=grad_w[r0:r1, k])
            if grad_f is not None:
                grad_f[r0:r1].addr_(w_agnostic, grad_pooled[b])
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
        return ScaledCosine.apply(features, _normalize(centres), self.scale)[0]

    def snippet_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._cosine(features.float(), self.centres.float())

    def forward(self, features: torch.Tensor, packing: Packing) -> BranchOutput:
        """Head over packed features [S, D]; the outputs are padded per video."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = features.float()
            centres = self.centres.float()
            # one product against the class centres and the foreground centre
            both = torch.cat([centres, self.fg_centre.float()])
            scores, dots = ScaledCosine.apply(z, _normalize(both), self.scale)  # [S, C+2] each
            logits = scores[:, :-1]
            gates = torch.sigmoid(scores)  # class-wise attention and (last) class-agnostic a_t
            sums = torch.stack([g.sum(0) for g in packing.split(gates)])  # [B, C+2]
            weights = gates / packing.repeat(sums + 1e-5)
            # class-wise pooled features p_k = sum_t w_tk z_t against their own centre u_k:
            # scale * (sum_t w_tk z_t . u_k) / (||p_k|| + 1e-9), without forming p ([B, C+1, D])
            pooled_dots = torch.stack([d.sum(0) for d in packing.split(weights[:, :-1] * dots[:, :-1])])
            pooled_norms, pooled_fg = HeadPooling.apply(weights, z, packing.lengths)  # [B, C+1], [B, D]
            video_bg = F.softmax(self.scale * pooled_dots / (pooled_norms + 1e-9), dim=-1)
            video_fg = F.softmax(self._cosine(pooled_fg, centres), dim=-1)
            attention = packing.pad(gates[:, -1])
        return BranchOutput(video_fg=video_fg, video_bg=video_bg, attention=attention, logits=packing.pad(logits))
