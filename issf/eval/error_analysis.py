"""Detection error breakdown in the style of DETAD (Alwassel et al., ECCV 2018).

Every considered detection gets exactly one category. With ``α = tiou`` and ``β = min_tiou``
(0.1), the rules are tried in this order and the first that holds wins:

1. ``true_positive``: the greedy matching of the mAP gives it a ground-truth (GT) instance. Per
   (video, class), detections are visited by decreasing score and each takes the still-unmatched
   GT of its own class with the highest tIoU ``>= α``. Ties follow the ``"anet"`` protocol of
   :mod:`issf.eval.functional` (ActivityNet's code): equal scores rank the later detection row first,
   equal tIoUs prefer the later GT; with ``top_k_factor=None`` the true positives are exactly
   those of that mAP.
2. ``double_detection``: tIoU ``>= α`` with a GT of its class (necessarily one already matched
   by a higher-scored detection, otherwise rule 1 would have matched it).
3. ``wrong_label``: tIoU ``>= α`` with a GT of another class.
4. ``localization``: ``β <= tIoU < α`` with a GT of its class.
5. ``confusion``: ``β <= tIoU < α`` with a GT of another class.
6. ``background``: tIoU ``< β`` with every GT of the video (including videos without GT).

DETAD decides rules 2-5 by the class of the single GT of highest tIoU; here, within a tIoU band
(``>= α``, then ``[β, α)``), a GT of the detection's own class takes precedence. The two differ
only for a detection that overlaps GTs of both its own and another class in the same band.

Considered detections: DETAD's "G" rule keeps, per class, the ``int(top_k_factor * G_c)``
best-ranked detections (same ranking as rule 1), ``G_c`` being the number of GT instances of class ``c`` (so classes
without GT contribute none); ``top_k_factor=None`` keeps all. With ``filter_ambiguous`` the
detections that overlap an ambiguous interval of their video are dropped first (as the mAP does).
Matching only sees considered detections.

False negatives are the GT instances left unmatched, counted per instance-length bin.
tIoU is the continuous ``|A ∩ B| / |A ∪ B|`` of segments in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from issf.data.annotations import GroundTruth
from issf.eval.detections import Detections
from issf.eval.functional import candidate_pairs, greedy_match, pair_iou
from issf.eval.intervals import overlaps_any

CATEGORIES: tuple[str, ...] = (
    "true_positive",
    "double_detection",
    "wrong_label",
    "localization",
    "confusion",
    "background",
)
ERROR_CATEGORIES: tuple[str, ...] = CATEGORIES[1:]
NOT_CONSIDERED = -1  # category code of detections outside the top-k (or dropped as ambiguous)

DEFAULT_LENGTH_EDGES: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
DEFAULT_LENGTH_NAMES: tuple[str, ...] = ("XS", "S", "M", "L", "XL")

TP, DOUBLE, WRONG, LOC, CONF, BG = range(len(CATEGORIES))


@dataclass
class ErrorBreakdown:
    """Result of :func:`error_breakdown`.

    ``category[i]`` is the index in :data:`CATEGORIES` of detection ``i`` (input order) or
    :data:`NOT_CONSIDERED`. ``counts``/``fractions`` are over the considered detections
    (fractions sum to 1 when there is at least one). ``gt_bin[j]`` is the length bin of GT ``j``,
    ``gt_matched[j]`` whether a true positive matched it.
    """

    category: np.ndarray
    counts: dict[str, int]
    fractions: dict[str, float]
    bin_names: tuple[str, ...]
    bin_edges: tuple[float, ...]
    false_negatives: dict[str, int]
    gt_per_bin: dict[str, int]
    gt_matched: np.ndarray
    gt_bin: np.ndarray
    tiou: float
    min_tiou: float
    top_k_factor: float | None

    @property
    def num_considered(self) -> int:
        return int(sum(self.counts.values()))

    @property
    def num_false_negatives(self) -> int:
        return int(sum(self.false_negatives.values()))

    @property
    def false_positive_fractions(self) -> dict[str, float]:
        """Share of each error category among the false positives (zeros when there are none)."""
        n_fp = sum(self.counts[c] for c in ERROR_CATEGORIES)
        return {c: self.counts[c] / n_fp if n_fp else 0.0 for c in ERROR_CATEGORIES}

    @property
    def false_negative_rates(self) -> dict[str, float]:
        """Unmatched share of the GT instances of each length bin (NaN for an empty bin)."""
        return {
            b: self.false_negatives[b] / self.gt_per_bin[b] if self.gt_per_bin[b] else float("nan")
            for b in self.bin_names
        }


def length_bin_names(edges: Sequence[float]) -> tuple[str, ...]:
    """Names of the bins ``[0, e0), [e0, e1), ..., [e_last, inf)``: XS..XL for the default edges."""
    edges = tuple(float(e) for e in edges)
    if edges == DEFAULT_LENGTH_EDGES:
        return DEFAULT_LENGTH_NAMES
    bounds = (0.0, *edges)
    names = [f"{a:g}-{b:g}s" for a, b in zip(bounds[:-1], bounds[1:])]
    return (*names, f">={edges[-1]:g}s") if edges else ("all",)


def _top_k_mask(det: Detections, gt: GroundTruth, factor: float, eligible: np.ndarray) -> np.ndarray:
    """Per class, the ``int(factor * G_c)`` best-ranked eligible detections (equal scores: later row first)."""
    n_gt = np.bincount(gt.segment_label, minlength=gt.num_classes)
    k = np.floor(factor * n_gt + 1e-9).astype(np.int64)  # int() without float noise (0.29 * 100)
    rows = np.flatnonzero(eligible)
    order = rows[np.lexsort((-rows, -det.score[rows], det.label[rows]))]
    lab = det.label[order]
    pos_in_class = np.arange(len(order)) - np.searchsorted(lab, lab, "left")
    keep = np.zeros(len(det), dtype=bool)
    keep[order] = pos_in_class < k[lab]
    return keep


def _check(det: Detections, gt: GroundTruth, tiou: float, min_tiou: float, edges: tuple[float, ...]) -> None:
    if det.units != "seconds":
        raise ValueError(f"error_breakdown: detections are in {det.units}; call to_seconds first")
    if len(det) and not (0 <= det.video.min() and det.video.max() < gt.num_videos):
        raise ValueError(f"error_breakdown: detection video index out of range for {gt.num_videos} videos")
    if len(det) and not (0 <= det.label.min() and det.label.max() < gt.num_classes):
        raise ValueError(f"error_breakdown: detection label out of range for {gt.num_classes} classes")
    if not (0.0 < tiou <= 1.0 and 0.0 <= min_tiou <= tiou):
        raise ValueError(
            f"error_breakdown: need 0 <= min_tiou <= tiou <= 1, 0 < tiou; got {min_tiou}, {tiou}"
        )
    if any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"error_breakdown: length_bins must be positive and increasing, got {edges}")


def error_breakdown(
    detections: Detections,
    gt: GroundTruth,
    tiou: float = 0.5,
    top_k_factor: float | None = 1.0,
    *,
    min_tiou: float = 0.1,
    length_bins: Sequence[float] = DEFAULT_LENGTH_EDGES,
    bin_names: Sequence[str] | None = None,
    filter_ambiguous: bool = False,
) -> ErrorBreakdown:
    """Categorise every detection (seconds) and count unmatched GT by length; see the module docstring.

    ``length_bins`` are the inner edges in seconds: ``(2, 4, 8, 16)`` gives XS < 2 s, S 2-4,
    M 4-8, L 8-16 and XL >= 16 s (lower edges inclusive). ``bin_names`` defaults to
    :func:`length_bin_names`.
    """
    edges = tuple(float(e) for e in length_bins)
    names = tuple(bin_names) if bin_names is not None else length_bin_names(edges)
    if len(names) != len(edges) + 1:
        raise ValueError(f"error_breakdown: {len(edges)} length edges need {len(edges) + 1} bin names")
    _check(detections, gt, float(tiou), float(min_tiou), edges)

    considered = np.ones(len(detections), dtype=bool)
    if filter_ambiguous and len(gt.ambiguous):
        d, amb = detections, gt.ambiguous
        considered &= ~overlaps_any(d.video, d.start, d.end, gt.ambiguous_video, amb[:, 0], amb[:, 1])
    if top_k_factor is not None:
        considered = _top_k_mask(detections, gt, float(top_k_factor), considered)
    idx = np.flatnonzero(considered)
    det = detections.select(idx)

    pair_det, pair_gt = candidate_pairs(det.video, gt.segment_video)
    iou = pair_iou(det.start[pair_det], det.end[pair_det], gt.segments[pair_gt, 0], gt.segments[pair_gt, 1],
                   discrete=False)
    same = det.label[pair_det] == gt.segment_label[pair_gt]
    best_same = np.zeros(len(det))
    best_other = np.zeros(len(det))
    np.maximum.at(best_same, pair_det[same], iou[same])
    np.maximum.at(best_other, pair_det[~same], iou[~same])

    rank = np.empty(len(det), dtype=np.int64)
    rank[np.lexsort((-np.arange(len(det)), -det.score))] = np.arange(len(det))  # equal scores: later first
    ok = same & (iou >= tiou)
    # the mAP's greedy matching at the one threshold (equal tIoU: later GT first, as the anet protocol)
    tp, matched = greedy_match(pair_det[ok], pair_gt[ok], iou[ok], -pair_gt[ok], det.video * gt.num_classes + det.label,
                               rank, len(gt.segments), np.asarray([tiou], dtype=np.float64))
    tp_det = np.flatnonzero(tp[0])
    tp_gt = matched[0, tp_det]

    cat = np.full(len(det), BG, dtype=np.int64)
    # assign from the lowest priority up, so that higher-priority rules overwrite
    cat[best_other >= min_tiou] = CONF
    cat[best_same >= min_tiou] = LOC
    cat[best_other >= tiou] = WRONG
    cat[best_same >= tiou] = DOUBLE
    cat[tp_det] = TP

    category = np.full(len(detections), NOT_CONSIDERED, dtype=np.int64)
    category[idx] = cat
    counts_arr = np.bincount(cat, minlength=len(CATEGORIES))
    total = int(counts_arr.sum())
    counts = {c: int(n) for c, n in zip(CATEGORIES, counts_arr)}
    fractions = {c: (int(n) / total if total else 0.0) for c, n in zip(CATEGORIES, counts_arr)}

    gt_matched = np.zeros(len(gt.segments), dtype=bool)
    gt_matched[tp_gt] = True
    lengths = gt.segments[:, 1] - gt.segments[:, 0]
    gt_bin = np.searchsorted(np.asarray(edges), lengths, side="right").astype(np.int64)
    n_bin = np.bincount(gt_bin, minlength=len(names))
    fn_bin = np.bincount(gt_bin[~gt_matched], minlength=len(names))
    return ErrorBreakdown(
        category=category,
        counts=counts,
        fractions=fractions,
        bin_names=names,
        bin_edges=edges,
        false_negatives={b: int(n) for b, n in zip(names, fn_bin)},
        gt_per_bin={b: int(n) for b, n in zip(names, n_bin)},
        gt_matched=gt_matched,
        gt_bin=gt_bin,
        tiou=float(tiou),
        min_tiou=float(min_tiou),
        top_k_factor=None if top_k_factor is None else float(top_k_factor),
    )
