"""The torchmetrics ``Metric`` for temporal action detection mAP@tIoU, a thin stateful layer over
:mod:`issf.eval.functional` (which documents the two protocols and their exactness)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from issf.data.annotations import GroundTruth
from issf.eval.functional import (
    _COLUMNS,
    ArrayLike,
    _check_options,
    _mean_in_range,
    _PreparedGT,
    _result,
    _score_detections,
    _to_index,
    _to_numpy,
    exact_thresholds,
    summarize,
)


class TemporalDetectionMAP(Metric):
    """Detection mAP@tIoU over a fixed ground truth, accumulated over batches and DDP processes.

    ``update`` takes detections in seconds (``video_index`` into ``ground_truth.video_ids``, class
    index ``label``); ``compute`` returns ``ap`` [C, T] (NaN for classes without GT), ``map`` [T],
    ``map_avg`` and ``tiou`` [T], all float64 fractions. ``summarize`` turns them into percent.

    States are 1-D float64 lists reduced by concatenation (gloo and NCCL gather float64; an empty
    rank is padded with an empty float64 tensor so that it still takes part in the gather).

    De-duplication (padded ``DistributedSampler``): every ``update`` records which videos it covers
    (``videos``, default: the videos of its detections) and how many rows each has. ``compute``
    keeps each video's detections from the first recorded update that covered it (process rank,
    then call order) and drops the others. Hence all detections of one video must be passed in a
    single ``update`` call; a warning is raised when discarded copies differ in size.

    Example (one video of 10 s with one "jump" from 2 to 6 s; one good and one poor detection):

    >>> import torch
    >>> from issf.data.annotations import GroundTruth
    >>> gt = GroundTruth(["jump"], ["v0"], [10.0], [[2.0, 6.0]], [0], [0])
    >>> metric = TemporalDetectionMAP(gt, tiou_thresholds=[0.5, 0.7])
    >>> metric.update(torch.tensor([0, 0]), torch.tensor([2.2, 0.0]), torch.tensor([6.1, 9.0]),
    ...               torch.tensor([0, 0]), torch.tensor([0.9, 0.4]))
    >>> metric.summarize(metric.compute())
    {'mAP@0.5': 100.0, 'mAP@0.7': 100.0, 'AVG': 100.0}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    _STATES = ("det_video", "det_start", "det_end", "det_label", "det_score", "cov_video", "cov_count")

    def __init__(
        self,
        ground_truth: GroundTruth,
        tiou_thresholds: Sequence[float],
        protocol: str = "anet",
        snippet_seconds: float = 0.64,
        filter_ambiguous: bool = False,
        compat_locmap_return0: bool = False,
        average_ranges: Mapping[str, tuple[float, float]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_options(protocol, snippet_seconds, compat_locmap_return0)
        self.protocol = protocol
        self.snippet_seconds = float(snippet_seconds)
        self.tiou_thresholds = exact_thresholds(tiou_thresholds)
        self.filter_ambiguous = bool(filter_ambiguous)
        self.compat_locmap_return0 = bool(compat_locmap_return0)
        thr = np.asarray(self.tiou_thresholds)
        self.average_ranges = {}
        for name, (lo, hi) in (average_ranges or {}).items():
            if np.isnan(_mean_in_range(thr, thr, float(lo), float(hi))):
                raise ValueError(
                    f"average range {name!r} = ({lo}, {hi}) contains no tIoU threshold of {list(thr)}"
                )
            self.average_ranges[str(name)] = (float(lo), float(hi))
        self.ground_truth = ground_truth
        self._prep = _PreparedGT.build(ground_truth, protocol, self.snippet_seconds)
        for name in self._STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        video_index: ArrayLike,
        start: ArrayLike,
        end: ArrayLike,
        label: ArrayLike,
        score: ArrayLike,
        videos: ArrayLike | None = None,
    ) -> None:
        """Add the detections (seconds) of some videos; ``videos`` lists the videos evaluated in this
        call (including those without detections), by default the videos of the detections."""
        where = f"{type(self).__name__}.update"
        cols = [_to_numpy(x, n) for x, n in zip((video_index, start, end, label, score), _COLUMNS)]
        video, s, e, lab, sc = self._prep.check_detections(*cols, where=where)
        if videos is None:
            covered = np.unique(video)
        else:
            covered = np.unique(_to_index(_to_numpy(videos, "videos"), "videos entry", where))
            bad = (covered < 0) | (covered >= self.ground_truth.num_videos)
            if bad.any():
                raise ValueError(
                    f"{where}: videos contains index {covered[bad][0]} ({self.ground_truth.num_videos} videos)"
                )
            missing = ~np.isin(video, covered)
            if missing.any():
                i = int(np.flatnonzero(missing)[0])
                raise ValueError(
                    f"{where}: row {i}: video '{self.ground_truth.video_ids[video[i]]}' is not in `videos`"
                )
        if len(covered) == 0:
            return
        order = np.argsort(video, kind="stable")
        video_sorted = video[order]
        count = np.searchsorted(video_sorted, covered, "right") - np.searchsorted(
            video_sorted, covered, "left"
        )
        values = (video_sorted, s[order], e[order], lab[order], sc[order], covered, count)
        for name, value in zip(self._STATES, values):
            getattr(self, name).append(
                torch.as_tensor(np.asarray(value, dtype=np.float64), device=self.device)
            )

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        # a rank without any update must still gather a float64 tensor (torchmetrics pads with self.dtype)
        for name in self._STATES:
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.zeros(0, dtype=torch.float64, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)

    def _state_array(self, name: str) -> np.ndarray:
        value = getattr(self, name)
        if isinstance(value, list):
            value = torch.cat(value) if value else torch.zeros(0, dtype=torch.float64)
        return value.detach().cpu().numpy().astype(np.float64, copy=False)

    def _deduplicated(self) -> tuple[np.ndarray, ...]:
        """Detection columns with each video taken from its first covering update, in canonical order."""
        video, start, end, label, score, cov_video, cov_count = (self._state_array(n) for n in self._STATES)
        cov_video = cov_video.astype(np.int64)
        cov_count = cov_count.astype(np.int64)
        if int(cov_count.sum()) != len(video):
            raise RuntimeError("TemporalDetectionMAP: detection and coverage states are out of step")
        _, first = np.unique(cov_video, return_index=True)
        kept = np.zeros(len(cov_video), dtype=bool)
        kept[first] = True
        kept_count = np.zeros(self.ground_truth.num_videos, dtype=np.int64)
        kept_count[cov_video[first]] = cov_count[first]
        differs = ~kept & (cov_count != kept_count[cov_video])
        if differs.any():
            v = self.ground_truth.video_ids[cov_video[np.flatnonzero(differs)[0]]]
            warnings.warn(
                f"TemporalDetectionMAP: video '{v}' was covered by several updates with different numbers of "
                "detections; only the first update is kept (pass all detections of a video in one update)",
                UserWarning,
                stacklevel=3,
            )
        rows = np.repeat(kept, cov_count)
        video = video[rows].astype(np.int64)
        order = np.argsort(video, kind="stable")
        return (
            video[order],
            start[rows][order],
            end[rows][order],
            label[rows][order].astype(np.int64),
            score[rows][order],
        )

    def compute(self) -> dict[str, Tensor]:
        thresholds = np.asarray(self.tiou_thresholds)
        ap = _score_detections(
            self._prep, *self._deduplicated(), thresholds, self.filter_ambiguous, self.compat_locmap_return0
        )
        return _result(ap, thresholds)

    def summarize(self, result: Mapping[str, Tensor] | None = None) -> dict[str, float]:
        """Percent summary (see :func:`summarize`) with this metric's ``average_ranges``."""
        return summarize(self.compute() if result is None else result, self.average_ranges)


# ---------------------------------------------------------------------------------------------
# classification
