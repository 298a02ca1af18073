"""Model outputs -> detections -> mAP, for one evaluation split (used by the LightningModule and
by ``task=eval``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from issf.data.annotations import GroundTruth
from issf.eval.detections import Detections
from issf.eval.functional import PROTOCOLS
from issf.eval.localize import LocalizationConfig, localize
from issf.eval.metric import TemporalDetectionMAP
from issf.utils.config_types import check_field_types

THUMOS_AVERAGES = {"AVG(0.1:0.5)": (0.1, 0.5), "AVG(0.3:0.7)": (0.3, 0.7), "AVG(0.1:0.7)": (0.1, 0.7)}


@dataclass
class EvaluationConfig:
    """How detections are produced and scored (lives with the dataset config)."""

    tiou_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    protocol: str = "anet"  # "anet" (official ActivityNet, seconds) | "wtalc" (official ISSF, snippets)
    filter_ambiguous: bool = True
    compat_locmap_return0: bool = False
    average_ranges: dict[str, Any] = field(default_factory=lambda: dict(THUMOS_AVERAGES))
    localization: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_field_types(self, "data.evaluation.")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"data.evaluation.protocol: expected one of {PROTOCOLS}, got {self.protocol!r}")
        thresholds = [float(t) for t in self.tiou_thresholds]
        if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
            raise ValueError(f"data.evaluation.tiou_thresholds: must be a non-empty list of values in (0, 1], "
                             f"got {list(self.tiou_thresholds)}")
        self.average_ranges = self._existing_ranges(thresholds)

    def _existing_ranges(self, thresholds: list[float]) -> dict[str, Any]:
        """The ``average_ranges`` whose both ends are configured tIoU thresholds. Any other entry is
        dropped with a warning: its column (``AVG(0.1:0.7)`` with ``tiou_thresholds=[0.5]``) would
        claim an average over thresholds that were not evaluated."""
        kept = {}
        for name, bounds in dict(self.average_ranges).items():
            try:
                lo, hi = (float(b) for b in bounds)
            except (TypeError, ValueError):
                raise ValueError(f"data.evaluation.average_ranges.{name}: expected [low, high], got {bounds!r}") from None
            if lo > hi:
                raise ValueError(f"data.evaluation.average_ranges.{name}: low {lo:g} > high {hi:g}")
            if all(any(abs(b - t) < 1e-9 for t in thresholds) for b in (lo, hi)):
                kept[name] = bounds
            else:
                warnings.warn(f"data.evaluation.average_ranges.{name} [{lo:g}, {hi:g}] dropped: its ends are not both "
                              f"among data.evaluation.tiou_thresholds {thresholds}", UserWarning, stacklevel=4)
        return kept

    def localization_config(self) -> LocalizationConfig:
        return LocalizationConfig(**self.localization)

    def build_metric(self, ground_truth: GroundTruth, snippet_seconds: float) -> TemporalDetectionMAP:
        return TemporalDetectionMAP(
            ground_truth,
            tiou_thresholds=list(self.tiou_thresholds),
            protocol=self.protocol,
            snippet_seconds=snippet_seconds,
            filter_ambiguous=self.filter_ambiguous,
            compat_locmap_return0=self.compat_locmap_return0,
            average_ranges={k: tuple(v) for k, v in self.average_ranges.items()},
        )


@dataclass
class EvaluationResult:
    """One evaluation of one split: what metrics.json, detections.json, the plots and the W&B
    tables show."""

    summary: dict[str, float]  # mAP per tIoU, the averages and (when known) cls_mAP, in %
    per_class: dict[str, float]  # AP per class averaged over the tIoUs, in %
    baseline: dict[str, float]  # the whole-video, top-class baseline's summary
    detections: Detections  # seconds
    ground_truth: GroundTruth
    config: EvaluationConfig


class VideoEvaluator(nn.Module):
    """Localizes each evaluated video and feeds the detections (seconds) to the mAP metric.

    Detections are also kept (per process) so they can be written out after the epoch.
    """

    def __init__(self, ground_truth: GroundTruth, cfg: EvaluationConfig, snippet_seconds: float):
        super().__init__()
        self.ground_truth = ground_truth
        self.cfg = cfg
        self.loc_cfg = cfg.localization_config()
        self.snippet_seconds = snippet_seconds
        self.metric = cfg.build_metric(ground_truth, snippet_seconds)
        # trivial baseline on the same video scores: the top class over the whole video
        self.baseline = cfg.build_metric(ground_truth, snippet_seconds)
        self._parts: list[Detections] = []
        self._videos_without_detections: list[float] = []  # their top video score
        self._videos_seen = 0

    def update(
        self, index: torch.Tensor, video_scores: torch.Tensor, cas: torch.Tensor, lengths: torch.Tensor,
        scale: torch.Tensor | None = None,
    ) -> None:
        """Localize a batch; ``scale`` (snippets per CAS position) undoes uniform test sampling."""
        dets = localize_batch(index, video_scores, cas, lengths, scale, self.cfg, self.snippet_seconds,
                              self.ground_truth.durations)
        videos = index.cpu().numpy()
        self.add(dets, videos)
        top_scores = video_scores.float().cpu().numpy().max(1)
        self._videos_seen += len(videos)
        self._videos_without_detections.extend(top_scores[~np.isin(videos, dets.video)].tolist())
        top = video_scores.float().cpu().numpy().argmax(1)
        whole = Detections(
            videos, np.zeros(len(videos)), self.ground_truth.durations[videos], top,
            video_scores.float().cpu().numpy()[np.arange(len(videos)), top], units="seconds",
        )
        _update(self.baseline, whole, videos)

    def add(self, dets: Detections, videos: np.ndarray | None = None) -> None:
        """Score already-made detections (seconds); ``videos`` lists every video they cover."""
        self._parts.append(dets)
        _update(self.metric, dets, videos)

    def baseline_summary(self) -> dict[str, float]:
        """mAP of the whole-video, top-class baseline on the videos seen so far."""
        return self.baseline.summarize(self.baseline.compute())

    def detections(self) -> Detections:
        return Detections.concatenate(self._parts, units="seconds")

    def warn_if_few_detections(self) -> None:
        """Warn when most evaluated videos got no detection (e.g. a fixed class threshold against the
        flat video scores of a softmax over many classes)."""
        warn_if_few_detections(np.asarray(self._videos_without_detections), self._videos_seen, self.loc_cfg)

    def compute(self) -> dict[str, Any]:
        self.warn_if_few_detections()
        result = self.metric.compute()
        summary = self.metric.summarize(result)
        ap = result["ap"].cpu().numpy()
        per_class = {
            name: float(np.mean(ap[c]) * 100.0) for c, name in enumerate(self.ground_truth.class_names)
            if not np.isnan(ap[c]).all()
        }
        return {"summary": summary, "per_class": per_class, "detections": self.detections()}

    def result(self, cls_map: float | None = None, detections: Detections | None = None) -> EvaluationResult:
        """:meth:`compute` as an :class:`EvaluationResult`; ``cls_map`` (a fraction) is added to the
        summary as ``cls_mAP`` in %; ``detections`` replaces this process's own (e.g. those of all
        DDP ranks)."""
        computed = self.compute()
        summary = dict(computed["summary"])
        if cls_map is not None:
            summary["cls_mAP"] = 100.0 * float(cls_map)
        return EvaluationResult(
            summary=summary, per_class=computed["per_class"], baseline=self.baseline_summary(),
            detections=computed["detections"] if detections is None else detections,
            ground_truth=self.ground_truth, config=self.cfg,
        )

    def reset(self) -> None:
        self.metric.reset()
        self.baseline.reset()
        self._parts = []
        self._videos_without_detections = []
        self._videos_seen = 0


def localize_batch(
    index: torch.Tensor, video_scores: torch.Tensor, cas: torch.Tensor, lengths: torch.Tensor,
    scale: torch.Tensor | None, cfg: EvaluationConfig, snippet_seconds: float, durations: np.ndarray,
) -> Detections:
    """Detections in seconds of a batch of videos (``index``: their positions, which ``durations``
    is indexed by); ``scale`` (snippets per CAS position) undoes uniform test sampling. Segments
    are clipped to the durations, except under the W-TALC protocol (unclipped snippet ranges)."""
    dets = localize(
        cas.float().cpu().numpy(), video_scores.float().cpu().numpy(), cfg.localization_config(),
        lengths=lengths.cpu().numpy(), videos=index.cpu().numpy(),
    )
    if scale is not None and len(dets):
        videos, scales = index.cpu().numpy(), scale.cpu().numpy()
        order = np.argsort(videos)
        factor = scales[order][np.searchsorted(videos[order], dets.video)]
        dets = Detections(dets.video, dets.start * factor, dets.end * factor, dets.label, dets.score)
    # the official W-TALC protocol scores unclipped snippet ranges; seconds are clipped otherwise
    clip_to = None if cfg.protocol == "wtalc" else durations
    dets = dets.to_seconds(snippet_seconds, clip_to)
    if clip_to is not None:  # a detection entirely past the annotated duration clips to nothing
        dets = dets.select(dets.end > dets.start)
    return dets


def warn_if_few_detections(empty: np.ndarray, seen: int, loc: LocalizationConfig) -> None:
    """Warn when most of ``seen`` videos got no detection; ``empty``: the top video scores of those
    without one."""
    if seen == 0 or len(empty) <= seen / 2:
        return
    warnings.warn(
        f"{len(empty)} of {seen} evaluated videos got no detection; their top video "
        f"scores range {empty.min():.4f}..{empty.max():.4f} (class_selection={loc.class_selection}, "
        f"class_threshold={loc.class_threshold}); class_selection=top_k or relative does not depend "
        f"on the scale of the scores",
        RuntimeWarning, stacklevel=3,
    )


def _update(metric: TemporalDetectionMAP, dets: Detections, videos: np.ndarray | None) -> None:
    device = metric.device
    metric.update(
        torch.as_tensor(dets.video, device=device),
        torch.as_tensor(dets.start, device=device),
        torch.as_tensor(dets.end, device=device),
        torch.as_tensor(dets.label, device=device),
        torch.as_tensor(dets.score, device=device),
        videos=None if videos is None else torch.as_tensor(videos, device=device),
    )
