"""DETAD-style error breakdown on hand-made detections whose categories are known."""

from __future__ import annotations

import numpy as np
import pytest

from issf.data.annotations import GroundTruth
from issf.eval.detections import Detections
from issf.eval.error_analysis import CATEGORIES, NOT_CONSIDERED, error_breakdown, length_bin_names
from issf.eval.functional import detection_average_precision

A, B, C = 0, 1, 2
TP, DOUBLE, WRONG, LOC, CONF, BG = range(6)


def _gt(ambiguous=((), ())) -> GroundTruth:
    return GroundTruth(
        class_names=["A", "B", "C"],
        video_ids=["v0", "v1", "v2"],
        durations=[100.0, 100.0, 50.0],
        segments=[[10, 20], [30, 31.5], [50, 53], [5, 10], [60, 80]],
        segment_video=[0, 0, 0, 1, 1],
        segment_label=[A, B, A, A, B],
        ambiguous=np.asarray(ambiguous[0], dtype=float).reshape(-1, 2),
        ambiguous_video=ambiguous[1],
    )


# (video, start, end, label, score, expected category at tIoU 0.5)
ROWS = [
    (0, 11.0, 20.0, A, 0.8, DOUBLE),  # tIoU 0.9 with GT0, which the 0.9-scored copy takes
    (0, 30.0, 31.5, A, 0.7, WRONG),  # tIoU 1 with a B instance
    (0, 10.0, 20.0, A, 0.9, TP),  # GT0
    (1, 5.0, 7.0, A, 0.6, LOC),  # tIoU 0.4 with GT3 (A)
    (1, 60.0, 66.0, A, 0.5, CONF),  # tIoU 0.3 with GT4 (B)
    (0, 80.0, 90.0, A, 0.4, BG),
    (2, 0.0, 5.0, B, 0.3, BG),  # video without GT
    (1, 60.0, 80.0, B, 0.95, TP),  # GT4
]


def _dets(rows=ROWS) -> Detections:
    cols = list(zip(*[r[:5] for r in rows]))
    return Detections(*cols, units="seconds")


def _expected(rows=ROWS) -> np.ndarray:
    return np.array([r[5] for r in rows])


def test_each_category_and_false_negatives() -> None:
    res = error_breakdown(_dets(), _gt(), tiou=0.5, top_k_factor=None)
    np.testing.assert_array_equal(res.category, _expected())
    assert res.counts == {
        "true_positive": 2,
        "double_detection": 1,
        "wrong_label": 1,
        "localization": 1,
        "confusion": 1,
        "background": 2,
    }
    assert sum(res.fractions.values()) == pytest.approx(1.0)
    assert res.fractions["background"] == pytest.approx(2 / 8)
    assert sum(res.false_positive_fractions.values()) == pytest.approx(1.0)
    assert res.false_positive_fractions["background"] == pytest.approx(2 / 6)
    # GT lengths 10 (L), 1.5 (XS), 3 (S), 5 (M), 20 (XL); GT0 and GT4 are matched
    np.testing.assert_array_equal(res.gt_matched, [True, False, False, False, True])
    np.testing.assert_array_equal(res.gt_bin, [3, 0, 1, 2, 4])
    assert res.false_negatives == {"XS": 1, "S": 1, "M": 1, "L": 0, "XL": 0}
    assert res.gt_per_bin == {"XS": 1, "S": 1, "M": 1, "L": 1, "XL": 1}
    assert res.num_false_negatives == 3
    assert res.false_negative_rates["L"] == 0.0 and res.false_negative_rates["S"] == 1.0


def test_tiou_changes_categories() -> None:
    low = error_breakdown(_dets(), _gt(), tiou=0.3, top_k_factor=None)
    exp = _expected()
    exp[3] = TP  # tIoU 0.4 now suffices for GT3
    exp[4] = WRONG  # tIoU 0.3 with a B instance reaches the threshold
    np.testing.assert_array_equal(low.category, exp)
    assert low.false_negatives["M"] == 0

    high = error_breakdown(_dets(), _gt(), tiou=0.95, top_k_factor=None)
    exp = _expected()
    exp[0] = LOC  # tIoU 0.9 is below 0.95
    np.testing.assert_array_equal(high.category, exp)

    strict_bg = error_breakdown(_dets(), _gt(), tiou=0.5, top_k_factor=None, min_tiou=0.35)
    exp = _expected()
    exp[4] = BG  # tIoU 0.3 < min_tiou
    np.testing.assert_array_equal(strict_bg.category, exp)


def test_top_k_factor_restricts_per_class() -> None:
    # A has 3 GT instances, B has 2: factor 1 keeps the 3 best A and the 2 best B detections
    res = error_breakdown(_dets(), _gt(), tiou=0.5, top_k_factor=1.0)
    exp = _expected()
    exp[[3, 4, 5]] = NOT_CONSIDERED
    np.testing.assert_array_equal(res.category, exp)
    assert res.num_considered == 5

    half = error_breakdown(_dets(), _gt(), tiou=0.5, top_k_factor=0.5)  # int(1.5) = 1, int(1.0) = 1
    considered = np.flatnonzero(half.category != NOT_CONSIDERED)
    np.testing.assert_array_equal(considered, [2, 7])
    assert half.counts["true_positive"] == 2 and sum(half.fractions.values()) == pytest.approx(1.0)


def test_filter_ambiguous_drops_overlapping_detections() -> None:
    gt = _gt(ambiguous=([[79.0, 81.0]], [0]))
    res = error_breakdown(_dets(), gt, tiou=0.5, top_k_factor=None, filter_ambiguous=True)
    exp = _expected()
    exp[5] = NOT_CONSIDERED
    np.testing.assert_array_equal(res.category, exp)
    kept = error_breakdown(_dets(), gt, tiou=0.5, top_k_factor=None)
    np.testing.assert_array_equal(kept.category, _expected())


def test_greedy_takes_best_free_instance() -> None:
    gt = GroundTruth(["A", "B"], ["v"], [100.0], [[1, 11], [0, 10], [20, 30]], [0, 0, 0], [0, 0, 1])
    # the 0.9 detection must take its best instance (GT1, tIoU 1; GT0 only 0.82), leaving GT0
    # (tIoU 0.67; GT1 0.54 < 0.6) to the 0.5 detection listed first
    dets = Detections(
        [0, 0, 0], [3.0, 0.0, 20.0], [13.0, 10.0, 30.0], [0, 0, 0], [0.5, 0.9, 0.1], units="seconds"
    )
    res = error_breakdown(dets, gt, tiou=0.6, top_k_factor=None)
    np.testing.assert_array_equal(res.category, [TP, TP, WRONG])
    np.testing.assert_array_equal(res.gt_matched, [True, True, False])


def test_greedy_goes_by_score_not_by_tiou() -> None:
    gt = GroundTruth(["A"], ["v"], [100.0], [[0, 10]], [0], [0])
    dets = Detections([0, 0], [0.0, 1.0], [10.0, 10.0], [0, 0], [0.2, 0.8], units="seconds")
    res = error_breakdown(dets, gt, tiou=0.5, top_k_factor=None)
    np.testing.assert_array_equal(res.category, [DOUBLE, TP])


def test_equal_tiou_prefers_the_later_instance() -> None:
    # the 0.9 detection has tIoU 0.6 with both A instances and takes the later one (as "anet")
    gt = GroundTruth(["A"], ["v"], [100.0], [[0, 10], [5, 15]], [0, 0], [0, 0])
    dets = Detections([0, 0], [2.5, 5.0], [12.5, 15.0], [0, 0], [0.9, 0.5], units="seconds")
    res = error_breakdown(dets, gt, tiou=0.5, top_k_factor=None)
    np.testing.assert_array_equal(res.category, [TP, DOUBLE])
    np.testing.assert_array_equal(res.gt_matched, [False, True])


def test_thresholds_are_inclusive() -> None:
    gt = GroundTruth(["A"], ["v"], [100.0], [[0, 10]], [0], [0])
    dets = Detections([0], [0.0], [2.5], [0], [1.0], units="seconds")  # tIoU exactly 0.25
    assert error_breakdown(dets, gt, tiou=0.25, top_k_factor=None).category.tolist() == [TP]
    assert error_breakdown(dets, gt, tiou=0.5, min_tiou=0.25, top_k_factor=None).category.tolist() == [LOC]
    assert error_breakdown(dets, gt, tiou=0.5, min_tiou=0.26, top_k_factor=None).category.tolist() == [BG]


def test_same_class_wins_inside_a_band() -> None:
    # [0, 10] A (matched by the first detection) and [0, 9] B: the copy has tIoU 1 with A and
    # 0.9 with B -> double detection; [0, 9] A has tIoU 0.9 with A (matched) and 1.0 with B.
    gt = GroundTruth(["A", "B"], ["v"], [100.0], [[0, 10], [0, 9]], [0, 0], [0, 1])
    dets = Detections(
        [0, 0, 0], [0.0, 0.0, 0.0], [10.0, 10.0, 9.0], [0, 0, 0], [0.9, 0.8, 0.7], units="seconds"
    )
    res = error_breakdown(dets, gt, tiou=0.5, top_k_factor=None)
    np.testing.assert_array_equal(res.category, [TP, DOUBLE, DOUBLE])
    # ">= tiou with another class" outranks "localization with the own class"
    dets = Detections([0], [5.0], [9.0], [0], [1.0], units="seconds")  # 0.4 with A, 4/9 with B
    res = error_breakdown(dets, gt, tiou=0.44, top_k_factor=None)
    assert res.category.tolist() == [WRONG]


def _reference(det: Detections, gt: GroundTruth, tiou: float, min_tiou: float = 0.1) -> np.ndarray:
    """Plain loops, one detection at a time (ties: later detection first, later GT preferred)."""
    taken = np.zeros(len(gt.segments), dtype=bool)
    cat = np.full(len(det), -1)
    for i in sorted(range(len(det)), key=lambda i: (-det.score[i], -i)):
        best, best_j, same_max, other_max = -1.0, -1, 0.0, 0.0
        for j in range(len(gt.segments)):
            if gt.segment_video[j] != det.video[i]:
                continue
            s, e = gt.segments[j]
            inter = min(e, det.end[i]) - max(s, det.start[i])
            iou = inter / ((e - s) + (det.end[i] - det.start[i]) - inter) if inter > 0 else 0.0
            if gt.segment_label[j] == det.label[i]:
                same_max = max(same_max, iou)
                if not taken[j] and iou >= tiou and iou >= best:
                    best, best_j = iou, j
            else:
                other_max = max(other_max, iou)
        if best_j >= 0:
            taken[best_j] = True
            cat[i] = TP
        elif same_max >= tiou:
            cat[i] = DOUBLE
        elif other_max >= tiou:
            cat[i] = WRONG
        elif same_max >= min_tiou:
            cat[i] = LOC
        elif other_max >= min_tiou:
            cat[i] = CONF
        else:
            cat[i] = BG
    return cat


def _random_gt_and_jittered_copies(
    rng: np.random.Generator, n_vid: int, n_cls: int, n_gt: int, n_det: int,
    length_range: tuple[float, float], jitter: float,
) -> tuple[GroundTruth, np.ndarray, np.ndarray, np.ndarray]:
    """Random GT in 100 s videos and, for ``n_det`` random GT rows ``src``, jittered bounds (s, e)."""
    start = rng.uniform(0, 80, n_gt)
    gt = GroundTruth(
        [f"c{c}" for c in range(n_cls)],
        [f"v{v}" for v in range(n_vid)],
        np.full(n_vid, 100.0),
        np.c_[start, start + rng.uniform(*length_range, n_gt)],
        rng.integers(0, n_vid, n_gt),
        rng.integers(0, n_cls, n_gt),
    )
    src = rng.integers(0, n_gt, n_det)
    s = gt.segments[src, 0] + rng.normal(0, jitter, n_det)
    e = np.maximum(gt.segments[src, 1] + rng.normal(0, jitter, n_det), s + 0.2)
    return gt, src, s, e


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_vid, n_cls, n_det = 4, 3, 120
    # detections are jittered copies of GT (so that every category shows up) plus random ones
    gt, src, s, e = _random_gt_and_jittered_copies(rng, n_vid, n_cls, 14, n_det, (0.5, 20), 2.0)
    video = np.where(rng.random(n_det) < 0.85, gt.segment_video[src], rng.integers(0, n_vid, n_det))
    label = np.where(rng.random(n_det) < 0.7, gt.segment_label[src], rng.integers(0, n_cls, n_det))
    score = np.round(rng.random(n_det), 2)  # ties on purpose
    det = Detections(video, s, e, label, score, units="seconds")
    for tiou in (0.3, 0.5, 0.7):
        res = error_breakdown(det, gt, tiou=tiou, top_k_factor=None)
        np.testing.assert_array_equal(res.category, _reference(det, gt, tiou))
        assert set(res.category.tolist()) == set(range(len(CATEGORIES)))


def test_empty_inputs_and_validation() -> None:
    res = error_breakdown(Detections(units="seconds"), _gt())
    assert res.num_considered == 0 and all(v == 0.0 for v in res.fractions.values())
    assert res.num_false_negatives == 5
    with pytest.raises(ValueError, match="to_seconds"):
        error_breakdown(Detections([0], [0.0], [1.0], [0], [1.0]), _gt())
    with pytest.raises(ValueError, match="bin names"):
        error_breakdown(_dets(), _gt(), length_bins=(5.0,), bin_names=("a", "b", "c"))
    with pytest.raises(ValueError, match="min_tiou"):
        error_breakdown(_dets(), _gt(), tiou=0.05)


def test_custom_length_bins() -> None:
    # lower edges are inclusive: the 3 s instance (GT2) falls in ">=3s"
    res = error_breakdown(_dets(), _gt(), top_k_factor=None, length_bins=(3.0,))
    assert res.bin_names == ("0-3s", ">=3s") == length_bin_names((3.0,))
    np.testing.assert_array_equal(res.gt_bin, [1, 0, 1, 1, 1])
    assert res.false_negatives == {"0-3s": 1, ">=3s": 2}


def test_true_positives_reproduce_the_anet_map() -> None:
    """AP recomputed from the breakdown's true positives equals issf.eval.functional' "anet" AP."""
    rng = np.random.default_rng(7)
    n_cls, n_det = 3, 200
    gt, src, s, e = _random_gt_and_jittered_copies(rng, 5, n_cls, 20, n_det, (1, 15), 1.5)
    det = Detections(
        gt.segment_video[src], s, e, rng.integers(0, n_cls, n_det), np.round(rng.random(n_det), 1), "seconds"
    )
    thresholds = (0.3, 0.5, 0.7)
    ap = detection_average_precision(gt, det.video, det.start, det.end, det.label, det.score, thresholds)
    for t_i, tiou in enumerate(thresholds):
        tp = error_breakdown(det, gt, tiou=tiou, top_k_factor=None).category == TP
        for c in range(n_cls):
            rows = np.flatnonzero(det.label == c)
            rows = rows[np.lexsort((-rows, -det.score[rows]))]
            npos = int((gt.segment_label == c).sum())
            hits = np.cumsum(tp[rows])
            rec, prec = hits / npos, hits / np.arange(1, len(rows) + 1)
            prec = np.maximum.accumulate(np.r_[prec, 0.0][::-1])[::-1]
            ref = float(np.sum(np.diff(np.r_[0.0, rec]) * prec[:-1]))
            assert ap[c, t_i] == pytest.approx(ref, abs=1e-12)
