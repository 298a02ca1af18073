"""The ISSF network: base branch, saliency/boundary-refinement branch and memory branch.

Batched over right-padded videos with a boolean mask. Inside, the videos are packed back to back
(no padding rows) and every per-video operation (temporal differences, attention, pooling) runs on
its own rows, so that a batch gives the same per-video outputs as one video at a time
(docs/method.md, "Batching") and no work is spent on padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from issf.model.config import ISSFConfig
from issf.model.embedding import Embedding
from issf.model.head import BranchOutput, ClassificationHead
from issf.model.interaction import InteractionUnit, packed_attention
from issf.model.losses import attention_loss, nce, pseudo_label_loss, video_targets
from issf.model.memory import SalientMemory
from issf.model.packing import Packing
from issf.model.saliency import packed_differences, select_salient


@dataclass
class ForwardOutput:
    base: BranchOutput
    saliency: BranchOutput | None = None
    packing: Packing | None = None  # row layout of the packed tensors below
    fused: torch.Tensor | None = None  # [S, D] refined features F~ (packed)
    differences: torch.Tensor | None = None  # [B, T] temporal differences the saliency ranked (0 at padding)
    salient: torch.Tensor | None = None  # [B, T] salient indicator
    candidates: torch.Tensor | None = None  # [S, D] features the memory would store (packed)
    candidate_scores: torch.Tensor | None = None  # [S, C+1] their class scores (packed)
    memory_writes: list[MemoryWrite] = field(default_factory=list)  # memory updates applied this step

    @property
    def memory_updates(self) -> list[tuple[torch.Tensor, torch.Tensor, list[int]]]:
        """(candidate features, their scores, memory rows) of each update applied this step."""
        return [(w.features[w.member], w.scores[w.member], w.rows) for w in self.memory_writes]


@dataclass
class MemoryWrite:
    """One video's memory update: all its snippets, ``member`` marking the salient candidates."""

    features: torch.Tensor  # [T, D]
    scores: torch.Tensor  # [T, columns] ranking scores
    rows: list[int]  # memory rows written
    member: torch.Tensor  # [T] bool


class ISSF(nn.Module):
    def __init__(self, cfg: ISSFConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = Embedding(cfg.input_dim, cfg.embed_dim, cfg.dropout)
        self.head = ClassificationHead(cfg.embed_dim, cfg.num_classes, cfg.scale)
        if cfg.saliency:
            self.salient_unit = InteractionUnit(cfg.embed_dim, cfg.reduce, cfg.channel_interaction)
            if cfg.non_salient_branch:
                self.non_salient_unit = InteractionUnit(cfg.embed_dim, cfg.reduce, cfg.channel_interaction)
        if cfg.memory:
            rows = (1 if cfg.memory_read == "shared" else cfg.num_classes) + int(cfg.memory_background)
            self.memory = SalientMemory(
                rows, cfg.memory_slots, cfg.embed_dim, cfg.memory_ema_epoch, cfg.schedule_epochs
            )

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: Sequence[int] | None = None) -> ForwardOutput:
        """``lengths``: the videos' valid snippets as host integers (from the data loader), which
        spares reading them from the device; see docs/framework.md, "Host synchronisations"."""
        cfg = self.cfg
        packing = Packing.from_mask(mask, lengths)
        hidden, features = self.embedding(packing.pack(x))
        out = ForwardOutput(base=self.head(features, packing), packing=packing)
        if not cfg.saliency:
            return out
        source = features if cfg.compat.saliency_after_dropout else hidden
        diff = packing.pad(packed_differences(source.detach().float(), packing))
        salient = select_salient(diff, mask, cfg.saliency_ratio, cfg.compat.wrap_last, cfg.compat.saliency_skip_first)
        # F~ = (1 - lamb) F_s + lamb F_ns (F_ns = 0 without the non-salient branch)
        # the step's one host synchronisation: the salient sets' sizes are data-dependent, and the
        # attention's per-video key blocks (and the non-salient sets' sizes) follow from them
        counts = tuple(salient.sum(1).tolist())
        fused = self.salient_unit(features, salient, packing, weight=1.0 - cfg.lamb, counts=counts)
        if cfg.non_salient_branch:
            others = tuple(n - k for n, k in zip(packing.lengths, counts))
            fused = fused + self.non_salient_unit(features, mask & ~salient, packing, weight=cfg.lamb, counts=others)
        out.saliency = self.head(fused, packing)
        out.fused, out.differences, out.salient = fused, diff, salient
        if cfg.memory:
            stored = features if cfg.compat.memory_store_post_dropout else hidden
            out.candidates = stored.detach()
            with torch.no_grad():  # memory scores are stored, never differentiated
                out.candidate_scores = torch.softmax(self.head.snippet_logits(out.candidates), dim=-1)
        return out

    def _salient_candidates(self, out: ForwardOutput) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per video: all snippet features, their class scores, and the salient indicator [T]."""
        packing = out.packing
        member = packing.split(packing.pack(out.salient))
        feats, scores = packing.split(out.candidates), packing.split(out.candidate_scores)
        return list(zip(feats, scores, member))

    # ------------------------------------------------------------------ memory
    @staticmethod
    def _label_classes(labels: torch.Tensor, classes: list[list[int]] | None = None) -> list[list[int]]:
        """Each video's ground-truth classes; ``classes`` (host, from the data loader) spares
        reading them from the device."""
        if classes is not None:
            return [list(c) for c in classes]
        return [torch.nonzero(row > 0).flatten().tolist() for row in labels]

    @property
    def _background_row(self) -> int:
        """Row of the background bank (``memory_background``): the last one."""
        return self.memory.slots.shape[0] - 1

    def _read_rows(self, classes: list[int]) -> list[int]:
        """Memory rows one video's snippets read (``classes``: its ground-truth classes)."""
        read = self.cfg.memory_read
        if read == "class0":  # the released code: class 0 once per GT class (B1)
            rows = [0] * len(classes)
        elif read == "shared":
            rows = [0]
        elif read == "all_classes":
            rows = list(range(self.cfg.num_classes))
        else:
            rows = list(classes)
        if self.cfg.memory_background:
            rows.append(self._background_row)
        return rows

    def _write_args(
        self, scores: torch.Tensor, classes: list[int], init: bool = False
    ) -> tuple[torch.Tensor, list[int]]:
        """Scores and memory rows one video's candidates are inserted with. The released
        initialisation pass writes the ground-truth classes also in class-0 mode."""
        read, full = self.cfg.memory_read, scores
        if read == "class0" and not init:
            rows = [0] * len(classes)
        elif read == "shared":  # one bank, ranked by the candidate's best ground-truth-class score
            scores, rows = full[:, classes].amax(1, keepdim=True), [0]
        else:
            rows = list(classes)
        if self.cfg.memory_background:  # ranked by the background score (the last column)
            row = self._background_row
            scores = torch.cat([scores[:, :row], full[:, -1:]], 1)
            rows.append(row)
        return scores, rows

    def memory_branch(
        self, out: ForwardOutput, labels: torch.Tensor, epoch: int, update: bool = True,
        classes: list[list[int]] | None = None,
    ) -> BranchOutput:
        """Read the memory with the refined features, video by video in batch order, updating it
        after each video (the official per-video order, B13); head over the read features."""
        assert out.fused is not None and out.candidates is not None
        keys, counts = [], []
        candidates = self._salient_candidates(out) if update else []
        for b, video_classes in enumerate(self._label_classes(labels, classes)):
            keys.append(self.memory.read(self._read_rows(video_classes)).float())  # a copy: later updates do not change it
            counts.append(len(keys[-1]))
            if update:
                feats, scores, member = candidates[b]
                scores, rows = self._write_args(scores, video_classes)
                self.memory.update(feats, scores, rows, epoch, member=member)
                out.memory_writes.append(MemoryWrite(feats, scores, rows, member))
        read = packed_attention(out.fused, torch.cat(keys), out.packing.lengths, tuple(counts))
        if self.cfg.memory_residual:
            read = read + out.fused
        return self.head(read, out.packing)

    @torch.no_grad()
    def insert_into_memory(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        """Initialisation pass (call in eval mode): salient features into each video's GT classes."""
        out = self.forward(x, mask)
        for (feats, scores, member), classes in zip(self._salient_candidates(out), self._label_classes(labels)):
            self.memory.update(feats, *self._write_args(scores, classes, init=True), epoch, member=member)

    def memory_active(self, epoch: int) -> bool:
        return self.cfg.memory and epoch >= self.cfg.memory_start_epoch and self.memory.is_initialized()

    # ------------------------------------------------------------------ training objective
    def losses(
        self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, epoch: int, update_memory: bool = True,
        lengths: Sequence[int] | None = None, classes: list[list[int]] | None = None,
    ) -> tuple[dict[str, torch.Tensor], ForwardOutput]:
        """Per-video loss terms (each [B]) and the forward output; ``total`` is the training loss.
        ``lengths`` and ``classes`` (each video's ground-truth classes), as host values from the
        data loader, spare reading them from the device."""
        cfg = self.cfg
        labels = labels.float()
        out = self.forward(x, mask, lengths)
        fg, bg = video_targets(labels)
        loss_fg = nce(out.base.video_fg, fg)
        loss_bg = nce(out.base.video_bg, bg)
        terms: dict[str, torch.Tensor] = {}
        mem = None
        if out.saliency is not None:
            loss_fg = loss_fg + nce(out.saliency.video_fg, fg)
            loss_bg = loss_bg + nce(out.saliency.video_bg, bg)
        w_pl = cfg.w_pl
        if cfg.memory and epoch >= cfg.memory_start_epoch:
            w_pl = cfg.w_pl_memory
        if self.memory_active(epoch):
            mem = self.memory_branch(out, labels, epoch, update=update_memory, classes=classes)
            loss_fg = loss_fg + cfg.w_memory * nce(mem.video_fg, fg)
            loss_bg = loss_bg + cfg.w_memory * nce(mem.video_bg, bg)
        terms["fg"] = loss_fg
        terms["bg"] = loss_bg
        terms["att"] = attention_loss(out.base.attention, mask, cfg.att_ratio)
        total = loss_fg + cfg.w_bg * loss_bg + cfg.w_att * terms["att"]
        if cfg.pseudo_labels and out.saliency is not None:
            terms["pl"] = pseudo_label_loss(out.base.logits, self.pseudo_label_teacher(out, mem), mask, cfg.tau)
            total = total + w_pl * terms["pl"]
        terms["total"] = total
        return terms, out

    def pseudo_label_teacher(self, out: ForwardOutput, memory: BranchOutput | None = None) -> torch.Tensor:
        """Teacher snippet logits of the pseudo-label loss: the saliency branch's, mixed with the
        memory branch's once the memory is read (S^ = mix S_mem + (1 - mix) S_sal)."""
        if memory is None:
            return out.saliency.logits
        mix = self.cfg.pl_memory_mix
        return mix * memory.logits + (1.0 - mix) * out.saliency.logits

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, ForwardOutput]:
        """Video scores [B, C] and class activation sequence [B, T, C] (0 at padding)."""
        out = self.forward(x, mask)
        return (*self.fuse(out, mask), out)

    def fuse(self, out: ForwardOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg.num_classes
        w = self.cfg.fusion_base if out.saliency is not None else 1.0
        video = w * out.base.video_fg
        frames = w * torch.softmax(out.base.logits, dim=-1)
        if out.saliency is not None:
            video = video + (1.0 - w) * out.saliency.video_fg
            frames = frames + (1.0 - w) * torch.softmax(out.saliency.logits, dim=-1)
        cas = frames * out.base.attention[..., None] * mask[..., None]
        return video[:, :c], cas[..., :c]
