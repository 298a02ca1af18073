"""Temporal action detection mAP@tIoU, functional form (the ``Metric`` is in :mod:`issf.eval.metric`).

Two detection protocols are implemented, both exactly (checked against the outputs of the official
evaluators on the cases of ``data/reference/fixtures/map`` and ``data/reference/fixtures/wtalc``,
described in ``data/reference/PROVENANCE.md``):

``"anet"``
    The official ActivityNet ``eval_detection.py``: per class, predictions in descending score order
    take the free GT (same video and class) with the highest tIoU among those with tIoU >= θ
    (fall-through past taken GT), tIoU in float64 with the official formula, all-point interpolated
    AP over all GT of the class. Classes without GT are ignored (their AP is NaN and their
    predictions are dropped), classes with GT but no prediction get AP 0. Predictions on videos
    without GT are false positives. Predictions are never clipped to the video duration.
``"wtalc"``
    The evaluation the official ISSF code reports (W-TALC ``getLocMAP``): GT and predictions become
    snippet index ranges ``range(round(t / snippet_seconds))`` (half to even, ``t * 25 / 16`` for
    0.64 s snippets), IoU of integer index sets, the same greedy rule, VOC-style AP. Only videos with
    at least one GT segment are scored (predictions elsewhere are dropped, as there).

Tie rules (the official code leaves them to an unstable sort):

* equal scores: ``anet`` ranks the *later* row first (stable ascending sort, reversed, which is the
  convention of the reference fixtures); ``wtalc`` ranks the *earlier* row first (stable
  ``argsort(-score)``). For :class:`TemporalDetectionMAP` "row order" is the canonical order
  (video index, then the order within the ``update`` call that delivered the video), so results do
  not depend on batch order, number of processes or sampler padding.
* equal IoUs with several free GT: ``anet`` tries the later GT first (GT order of ``GroundTruth``),
  ``wtalc`` the earlier one, as the respective official code does.

Deliberate departures from the official code:

* ``anet`` rejects zero-length and inverted predictions (``ValueError``) instead of reproducing the
  0/0 = NaN tIoU that makes such a prediction a true positive. Degenerate GT segments are accepted:
  they count as positives and can never be matched (inverted ones raise a warning).
* ``wtalc``: a class with GT but no prediction gets AP 0; the official ``return 0`` for the whole
  threshold is available as ``compat_locmap_return0=True``.

Matching is vectorised: candidate (prediction, GT) pairs only exist inside a (video, class) block,
and blocks never interact. Predictions are numbered by their rank inside their block, and step ``k``
resolves the ``k``-th prediction of *every* block at once (and every threshold at once), so the only
Python loop runs over the largest number of competing predictions in one block.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from issf.data.annotations import GroundTruth
from issf.eval.intervals import overlaps_any, seconds_to_snippet_range

__all__ = ["PROTOCOLS", "detection_average_precision", "exact_thresholds", "summarize"]

PROTOCOLS = ("anet", "wtalc")
_COLUMNS = ("video_index", "start", "end", "label", "score")
ArrayLike = Tensor | np.ndarray | Sequence[float]


# ---------------------------------------------------------------------------------------------
# small helpers


def exact_thresholds(tiou_thresholds: Sequence[float]) -> tuple[float, ...]:
    """Thresholds as the doubles nearest to their (10-digit) decimal value, e.g. 0.1 * 7 -> 0.7.

    ``np.arange(0.1, 1.0, 0.1)`` gives 0.30000000000000004 and ``np.linspace(0.5, 0.95, 10)``
    0.8999999999999999; these differ from the decimal literals exactly when a tIoU lands on them.
    """
    out = tuple(round(float(t), 10) for t in tiou_thresholds)
    if not out:
        raise ValueError("tiou_thresholds must not be empty")
    bad = [t for t in out if not (0.0 < t <= 1.0)]
    if bad:
        raise ValueError(f"tiou_thresholds must lie in (0, 1], got {bad}")
    return out


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    return arr


def _first(mask: np.ndarray) -> int | None:
    """Index of the first True entry, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _to_index(arr: np.ndarray, name: str, where: str) -> np.ndarray:
    """Integer-valued array -> int64 (NaN, inf and fractions are errors)."""
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind != "f":
        raise ValueError(f"{where}: {name} must be numeric, got dtype {arr.dtype}")
    i = _first(~np.isfinite(arr) | (arr != np.round(arr)))
    if i is not None:
        raise ValueError(f"{where}: row {i}: {name} {arr[i].item()!r} is not an integer index")
    return arr.astype(np.int64)


def _mean_in_range(values: np.ndarray, thresholds: np.ndarray, lo: float, hi: float) -> float:
    sel = (thresholds >= lo - 1e-9) & (thresholds <= hi + 1e-9)
    return float(np.mean(values[sel])) if sel.any() else float("nan")


# ---------------------------------------------------------------------------------------------
# ground truth in the units of a protocol


@dataclass
class _PreparedGT:
    """Validated GT arrays in protocol units (seconds for anet, snippet indices for wtalc)."""

    gt: GroundTruth
    protocol: str
    snippet_seconds: float
    start: np.ndarray
    end: np.ndarray
    video: np.ndarray
    label: np.ndarray
    npos: np.ndarray  # [C] number of GT segments per class
    video_has_gt: np.ndarray  # [V] bool
    amb_video: np.ndarray
    amb_start: np.ndarray
    amb_end: np.ndarray

    @classmethod
    def build(cls, gt: GroundTruth, protocol: str, snippet_seconds: float) -> _PreparedGT:
        where = "TemporalDetectionMAP ground truth"
        n_vid, n_cls = gt.num_videos, gt.num_classes
        seg, vid, lab = gt.segments, gt.segment_video, gt.segment_label
        if len(seg) == 0:
            raise ValueError(f"{where}: no GT segment at all, detection mAP is undefined")
        i = _first((vid < 0) | (vid >= n_vid))
        if i is not None:
            raise ValueError(f"{where}: segment {i} refers to video index {vid[i]} ({n_vid} videos)")
        i = _first((lab < 0) | (lab >= n_cls))
        if i is not None:
            raise ValueError(
                f"{where}: segment {i} (video '{gt.video_ids[vid[i]]}') has label {lab[i]} ({n_cls} classes)"
            )

        def segment(i: int) -> str:
            return f"segment {i} (video '{gt.video_ids[vid[i]]}', label '{gt.class_names[lab[i]]}') {seg[i].tolist()}"

        i = _first(~np.isfinite(seg).all(axis=1))
        if i is not None:
            raise ValueError(f"{where}: {segment(i)} is not finite")
        inverted = seg[:, 0] > seg[:, 1]
        i = _first(inverted)
        if i is not None:
            warnings.warn(
                f"{where}: {int(inverted.sum())} inverted GT segment(s), e.g. {segment(i)}; "
                "they count as positives but can never be matched",
                UserWarning,
                stacklevel=3,
            )
        amb, amb_vid = gt.ambiguous, gt.ambiguous_video
        i = _first((amb_vid < 0) | (amb_vid >= n_vid) | ~np.isfinite(amb).all(axis=1))
        if i is not None:
            raise ValueError(
                f"{where}: ambiguous interval {i} is invalid: video {amb_vid[i]}, {amb[i].tolist()}"
            )
        start, end = seg[:, 0], seg[:, 1]
        amb_start, amb_end = amb[:, 0], amb[:, 1]
        if protocol == "wtalc":
            start = seconds_to_snippet_range(start, snippet_seconds)
            end = seconds_to_snippet_range(end, snippet_seconds)
            amb_start = seconds_to_snippet_range(amb_start, snippet_seconds)
            amb_end = seconds_to_snippet_range(amb_end, snippet_seconds)
        return cls(
            gt=gt,
            protocol=protocol,
            snippet_seconds=snippet_seconds,
            start=start,
            end=end,
            video=vid,
            label=lab,
            npos=np.bincount(lab, minlength=n_cls),
            video_has_gt=np.bincount(vid, minlength=n_vid) > 0,
            amb_video=amb_vid,
            amb_start=amb_start,
            amb_end=amb_end,
        )

    def check_detections(
        self,
        video: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        label: np.ndarray,
        score: np.ndarray,
        where: str,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validate raw detection columns; returns (video int64, start, end, label int64, score) float64."""
        n = len(video)
        if not (len(start) == len(end) == len(label) == len(score) == n):
            raise ValueError(
                f"{where}: video_index, start, end, label and score must have the same length, got "
                f"{n}, {len(start)}, {len(end)}, {len(label)}, {len(score)}"
            )
        ids, names = self.gt.video_ids, self.gt.class_names
        video = _to_index(video, "video index", where)
        i = _first((video < 0) | (video >= len(ids)))
        if i is not None:
            raise ValueError(
                f"{where}: row {i}: video index {video[i]} is not a video of the ground truth ({len(ids)} videos)"
            )
        label = _to_index(label, "label", where)
        i = _first((label < 0) | (label >= len(names)))
        if i is not None:
            raise ValueError(
                f"{where}: row {i} (video '{ids[video[i]]}'): label {label[i]} is not a class index (0..{len(names) - 1})"
            )

        def row(i: int) -> str:
            return f"{where}: row {i} (video '{ids[video[i]]}', label '{names[label[i]]}')"

        score = np.asarray(score, dtype=np.float64)
        start = np.asarray(start, dtype=np.float64)
        end = np.asarray(end, dtype=np.float64)
        for name, col in (("score", score), ("start", start), ("end", end)):
            i = _first(~np.isfinite(col))
            if i is not None:
                raise ValueError(f"{row(i)}: {name} is {float(col[i])}")
        i = _first(start > end)
        if i is not None:
            raise ValueError(f"{row(i)}: start {float(start[i])} > end {float(end[i])}")
        i = _first(start == end) if self.protocol == "anet" else None
        if i is not None:
            raise ValueError(
                f"{row(i)}: zero-length segment at {float(start[i])} (its official tIoU can be 0/0)"
            )
        return video, start, end, label, score


def candidate_pairs(det_block: np.ndarray, gt_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (detection, GT) index pairs that share a key (a block key video * C + class, or a video)."""
    gt_order = np.argsort(gt_block, kind="stable")
    keys = gt_block[gt_order]
    lo = np.searchsorted(keys, det_block, "left")
    count = np.searchsorted(keys, det_block, "right") - lo
    total = int(count.sum())
    pair_det = np.repeat(np.arange(len(det_block)), count)
    first = np.cumsum(count) - count
    pos = np.arange(total) - np.repeat(first, count) + np.repeat(lo, count)
    return pair_det, gt_order[pos]


def pair_iou(ds: np.ndarray, de: np.ndarray, gs: np.ndarray, ge: np.ndarray, discrete: bool) -> np.ndarray:
    """tIoU of paired intervals; 0 where they do not intersect.

    Continuous: the official ``segment_iou`` formula in float64. Discrete: ``|A ∩ B| / |A ∪ B|`` of the
    index sets ``range(s, e)`` (exact integers, one float64 division).
    """
    inter = np.minimum(de, ge) - np.maximum(ds, gs)
    iou = np.zeros(len(inter), dtype=np.float64)
    pos = inter > 0  # a tIoU >= θ > 0 needs a positive intersection; degenerate segments never have one
    inter, ds, de, gs, ge = inter[pos], ds[pos], de[pos], gs[pos], ge[pos]
    if discrete:
        union = np.maximum(ge - gs, 0) + np.maximum(de - ds, 0) - inter
    else:
        union = (ge - gs) + (de - ds) - inter
    iou[pos] = inter / union
    return iou


def greedy_match(
    pair_det: np.ndarray,
    pair_gt: np.ndarray,
    pair_iou: np.ndarray,
    pair_gt_rank: np.ndarray,
    det_block: np.ndarray,
    det_rank: np.ndarray,
    n_gt: int,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """True-positive flags [T, N] of the official greedy matching, for all thresholds at once, and
    the GT index each true positive took ([T, N], -1 elsewhere).

    A detection, in score order, takes the free GT of its block with the highest IoU >= θ (ties by
    ``pair_gt_rank``, lower first). Detections of different blocks never compete, so step ``k``
    handles the ``k``-th ranked candidate-holding detection of every block simultaneously.
    """
    n_thr = len(thresholds)
    tp = np.zeros((n_thr, len(det_block)), dtype=bool)
    matched = np.full((n_thr, len(det_block)), -1, dtype=np.int64)
    if len(pair_det) == 0:
        return tp, matched
    holders = np.unique(pair_det)
    holders = holders[np.lexsort((det_rank[holders], det_block[holders]))]
    block = det_block[holders]
    new_block = np.r_[True, block[1:] != block[:-1]]
    block_start = np.flatnonzero(new_block)
    step_of_det = np.zeros(len(det_block), dtype=np.int64)
    step_of_det[holders] = np.arange(len(holders)) - block_start[np.cumsum(new_block) - 1]

    step = step_of_det[pair_det]
    order = np.lexsort((pair_gt_rank, -pair_iou, pair_det, step))
    step, det, gt, iou = step[order], pair_det[order], pair_gt[order], pair_iou[order]
    bounds = np.searchsorted(step, np.arange(step[-1] + 2))
    taken = np.zeros((n_thr, n_gt), dtype=bool)
    thr = thresholds[:, None]
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        g, d = gt[a:b], det[a:b]
        # pairs are grouped by detection and sorted by preference: the first eligible one wins
        t_idx, j_idx = np.nonzero((iou[a:b] >= thr) & ~taken[:, g])
        if len(t_idx) == 0:
            continue
        dj = d[j_idx]
        first = np.r_[True, (t_idx[1:] != t_idx[:-1]) | (dj[1:] != dj[:-1])]
        t_idx, j_idx = t_idx[first], j_idx[first]
        taken[t_idx, g[j_idx]] = True
        tp[t_idx, d[j_idx]] = True
        matched[t_idx, d[j_idx]] = g[j_idx]
    return tp, matched


def _interpolated_ap(tp: np.ndarray, npos: int) -> np.ndarray:
    """All-point interpolated AP per row of ``tp`` [T, n] (ranked), same arithmetic as the official code."""
    n_thr = tp.shape[0]
    tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)
    fp_cum = np.cumsum(~tp, axis=1, dtype=np.float64)
    rec = tp_cum / float(npos)
    prec = tp_cum / (tp_cum + fp_cum)
    zeros = np.zeros((n_thr, 1))
    mprec = np.concatenate([zeros, prec, zeros], axis=1)
    mprec = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]
    mrec = np.concatenate([zeros, rec, np.ones((n_thr, 1))], axis=1)
    change = mrec[:, 1:] != mrec[:, :-1]
    terms = (mrec[:, 1:] - mrec[:, :-1]) * mprec[:, 1:]
    # summing only the recall-change terms (not zeros in place) keeps numpy's summation order
    return np.array([terms[t][change[t]].sum() for t in range(n_thr)])


def _score_detections(
    prep: _PreparedGT,
    video: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    label: np.ndarray,
    score: np.ndarray,
    thresholds: np.ndarray,
    filter_ambiguous: bool,
    compat_locmap_return0: bool,
) -> np.ndarray:
    """AP [C, T] of validated detections (row order = tie order, see the module docstring)."""
    wtalc = prep.protocol == "wtalc"
    n_cls = prep.gt.num_classes
    if wtalc:
        start = seconds_to_snippet_range(start, prep.snippet_seconds)
        end = seconds_to_snippet_range(end, prep.snippet_seconds)
    keep = prep.npos[label] > 0
    if wtalc:
        keep &= prep.video_has_gt[video]
    if filter_ambiguous and len(prep.amb_video):
        keep &= ~overlaps_any(video, start, end, prep.amb_video, prep.amb_start, prep.amb_end)
    video, start, end, label, score = video[keep], start[keep], end[keep], label[keep], score[keep]

    n = len(score)
    by_score = np.argsort(-score, kind="stable") if wtalc else np.argsort(score, kind="stable")[::-1]
    det_rank = np.empty(n, dtype=np.int64)
    det_rank[by_score] = np.arange(n)
    det_block = video * n_cls + label

    pair_det, pair_gt = candidate_pairs(det_block, prep.video * n_cls + prep.label)
    iou = pair_iou(start[pair_det], end[pair_det], prep.start[pair_gt], prep.end[pair_gt], discrete=wtalc)
    usable = iou >= thresholds.min()
    pair_det, pair_gt, iou = pair_det[usable], pair_gt[usable], iou[usable]
    gt_rank = pair_gt if wtalc else -pair_gt
    tp, _ = greedy_match(pair_det, pair_gt, iou, gt_rank, det_block, det_rank, len(prep.label), thresholds)

    ap = np.full((n_cls, len(thresholds)), np.nan)
    has_gt = prep.npos > 0
    ap[has_gt] = 0.0
    order = np.lexsort((det_rank, label))
    bounds = np.searchsorted(label[order], np.arange(n_cls + 1))
    for c in np.flatnonzero(has_gt):
        rows = order[bounds[c] : bounds[c + 1]]
        if len(rows):
            ap[c] = _interpolated_ap(tp[:, rows], int(prep.npos[c]))
    if wtalc and compat_locmap_return0 and (np.bincount(label, minlength=n_cls)[has_gt] == 0).any():
        ap[has_gt] = 0.0  # official getLocMAP: `return 0` for the whole threshold
    return ap


def _check_options(protocol: str, snippet_seconds: float, compat_locmap_return0: bool) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not (np.isfinite(snippet_seconds) and snippet_seconds > 0):
        raise ValueError(f"snippet_seconds must be > 0, got {snippet_seconds}")
    if compat_locmap_return0 and protocol != "wtalc":
        raise ValueError("compat_locmap_return0 only applies to protocol='wtalc'")


def detection_average_precision(
    ground_truth: GroundTruth,
    video_index: ArrayLike,
    start: ArrayLike,
    end: ArrayLike,
    label: ArrayLike,
    score: ArrayLike,
    tiou_thresholds: Sequence[float],
    protocol: str = "anet",
    snippet_seconds: float = 0.64,
    filter_ambiguous: bool = False,
    compat_locmap_return0: bool = False,
) -> np.ndarray:
    """Per-class AP [C, T] (fractions; NaN for classes without GT) of one set of detections in seconds.

    Functional form of :class:`TemporalDetectionMAP` without de-duplication: ties are broken by the
    given row order.
    """
    _check_options(protocol, snippet_seconds, compat_locmap_return0)
    thresholds = np.asarray(exact_thresholds(tiou_thresholds))
    prep = _PreparedGT.build(ground_truth, protocol, float(snippet_seconds))
    cols = [_to_numpy(x, n) for x, n in zip((video_index, start, end, label, score), _COLUMNS)]
    checked = prep.check_detections(*cols, where="detection_average_precision")
    return _score_detections(prep, *checked, thresholds, filter_ambiguous, compat_locmap_return0)


def _result(ap: np.ndarray, thresholds: np.ndarray) -> dict[str, Tensor]:
    # one contiguous 1-D mean per threshold: numpy's pairwise sum, as the official ``ap.mean(axis=1)``
    evaluated = ap[~np.isnan(ap).all(axis=1)]
    mean_ap = np.array([np.mean(np.ascontiguousarray(evaluated[:, t])) for t in range(ap.shape[1])])
    return {
        "ap": torch.from_numpy(ap),
        "map": torch.from_numpy(mean_ap),
        "map_avg": torch.tensor(float(np.mean(mean_ap)), dtype=torch.float64),
        "tiou": torch.tensor(thresholds, dtype=torch.float64),
    }


def summarize(
    result: Mapping[str, Tensor], average_ranges: Mapping[str, tuple[float, float]] | None = None
) -> dict[str, float]:
    """Percent values: ``mAP@<t>`` per threshold, ``AVG`` over all thresholds and one entry per range.

    A range ``(lo, hi)`` averages the thresholds within ``[lo, hi]`` (NaN if it holds none).
    """
    # torchmetrics squeezes one-element results to 0-d: one tIoU threshold is still a list of one
    maps = np.atleast_1d(np.asarray(result["map"].detach().cpu(), dtype=np.float64)) * 100.0
    thr = np.atleast_1d(np.asarray(result["tiou"].detach().cpu(), dtype=np.float64))
    out = {f"mAP@{t:g}": float(m) for t, m in zip(thr, maps)}
    out["AVG"] = float(np.mean(maps))
    for name, (lo, hi) in (average_ranges or {}).items():
        out[name] = _mean_in_range(maps, thr, float(lo), float(hi))
    return out


# ---------------------------------------------------------------------------------------------
# torchmetrics wrapper
