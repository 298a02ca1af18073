"""Detection mAP (protocols anet / wtalc) against the evaluation cases in data/reference, plus input checks,
de-duplication, tie rules (against a direct loop implementation) and classification mAP."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from issf.data.annotations import GroundTruth
from issf.eval.classification import ClassificationMAP, classification_map
from issf.eval.functional import detection_average_precision, exact_thresholds, summarize
from issf.eval.metric import TemporalDetectionMAP
from tests import reference
from tests.reference import read_json

MAP_DIR = reference.REFERENCE / reference.MAP_CASES
WTALC_DIR = reference.REFERENCE / reference.WTALC_CASES
THUMOS_ANNOTATIONS = reference.THUMOS_WTALC

MAP_FILES = reference.names(reference.MAP_CASES, "*.json.gz")
LOCMAP_FILES = reference.names(reference.WTALC_CASES, "locmap_*.json.gz")
DEGENERATE = ("10_degenerate_segments_finite.json.gz", "11_degenerate_segments_nan_quirk.json.gz")
THRESHOLD_SETS = ("tiou_0.1_0.7", "tiou_0.5_0.95")


# ---------------------------------------------------------------------------------------------
# fixture readers


def map_case(fx: dict) -> tuple[GroundTruth, tuple[np.ndarray, ...]]:
    """GroundTruth + detection columns of an ActivityNet-style fixture.

    Prediction video ids absent from the GT list are appended as videos without annotations
    (officially such predictions are false positives, exactly like those on a GT video without GT).
    """
    names = fx["class_names"]
    cls = {c: i for i, c in enumerate(names)}
    videos = [v["video_id"] for v in fx["ground_truth"]["videos"]]
    durations = [v["duration"] for v in fx["ground_truth"]["videos"]]
    for v in fx["predictions"]["video_id"]:
        if v not in videos:
            videos.append(v)
            durations.append(float("nan"))
    vid = {v: i for i, v in enumerate(videos)}
    ann, pred = fx["ground_truth"]["annotations"], fx["predictions"]
    amb = fx.get("ambiguous") or {"video_id": [], "t_start": [], "t_end": []}
    gt = GroundTruth(
        class_names=names,
        video_ids=videos,
        durations=durations,
        segments=np.c_[ann["t_start"], ann["t_end"]],
        segment_video=[vid[v] for v in ann["video_id"]],
        segment_label=[cls[c] for c in ann["label"]],
        ambiguous=np.c_[amb["t_start"], amb["t_end"]],
        ambiguous_video=[vid[v] for v in amb["video_id"]],
    )
    dets = (
        np.array([vid[v] for v in pred["video_id"]], dtype=np.int64),
        np.asarray(pred["t_start"], dtype=np.float64),
        np.asarray(pred["t_end"], dtype=np.float64),
        np.array([cls[c] for c in pred["label"]], dtype=np.int64),
        np.asarray(pred["score"], dtype=np.float64),
    )
    return gt, dets


def wtalc_annotations(spec: dict) -> dict:
    """W-TALC annotations as {classlist, videos: [{name, subset, duration, segments, labels}]}: inline
    ones as given, ``thumos14_reduced`` read from the .npy folder (byte strings, object arrays)."""
    if spec["source"] == "inline":
        return spec
    assert spec["source"] == "thumos14_reduced", spec["source"]

    def load(name: str) -> np.ndarray:
        return np.load(THUMOS_ANNOTATIONS / f"{name}.npy", allow_pickle=True)

    def text(values: np.ndarray) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    videos = [
        {
            "name": n,
            "subset": s,
            "duration": float(np.ravel(d)[0]),
            "segments": list(seg),
            "labels": text(lab),
        }
        for n, s, d, seg, lab in zip(
            text(load("videoname")), text(load("subset")), load("duration"), load("segments"), load("labels")
        )
    ]
    return {"classlist": text(load("classlist")), "videos": videos}


def wtalc_ground_truth(ann: dict) -> tuple[GroundTruth, np.ndarray]:
    """GroundTruth of the test subset (annotation order) and, for each proposal video index (which
    counts only test videos with GT), the GroundTruth video index."""
    test = [v for v in ann["videos"] if v["subset"] == "test"]
    cls = {c: i for i, c in enumerate(ann["classlist"])}
    segments = np.asarray([s for v in test for s in v["segments"]], dtype=np.float64).reshape(-1, 2)
    gt = GroundTruth(
        class_names=list(ann["classlist"]),
        video_ids=[v["name"] for v in test],
        durations=[v["duration"] for v in test],
        segments=segments,
        segment_video=[i for i, v in enumerate(test) for _ in v["segments"]],
        segment_label=[cls[c] for v in test for c in v["labels"]],
    )
    with_gt = np.array([i for i, v in enumerate(test) if len(v["segments"])], dtype=np.int64)
    return gt, with_gt


def locmap_case(fx: dict, snippet_seconds: float = 0.64) -> tuple[GroundTruth, tuple[np.ndarray, ...]]:
    """Proposals ``[video, s, e, score]`` (snippets, end exclusive) -> detections in seconds."""
    gt, with_gt = wtalc_ground_truth(wtalc_annotations(fx["annotations"]))
    rows, labels = [], []
    for position, props in enumerate(fx["input"]["seg_preds"]):
        props = np.asarray(props, dtype=np.float64).reshape(-1, 4)
        rows.append(props)
        labels.append(np.full(len(props), fx["input"]["class_of_position"][position], dtype=np.int64))
    p = np.concatenate(rows)
    dets = (
        with_gt[p[:, 0].astype(np.int64)],
        p[:, 1] * snippet_seconds,
        p[:, 2] * snippet_seconds,
        np.concatenate(labels),
        p[:, 3],
    )
    return gt, dets


def feed(metric: TemporalDetectionMAP, dets: tuple[np.ndarray, ...], seed: int | None = None) -> None:
    """One ``update`` per video (in a shuffled order when ``seed`` is given), as an evaluation loop does."""
    video = dets[0]
    videos = np.unique(video)
    if seed is not None:
        videos = np.random.default_rng(seed).permutation(videos)
    for v in videos:
        rows = video == v
        metric.update(*(torch.as_tensor(col[rows]) for col in dets))
    if len(videos) == 0:
        metric.update(*dets)


def check_expected(result: dict, block: dict, class_names: list[str], tol: float) -> None:
    """Per-class AP (NaN for classes outside ``block['classes']``), mAP and average mAP."""
    assert result["tiou"].tolist() == block["tiou_thresholds"]
    ap = result["ap"].numpy()
    for c, name in enumerate(class_names):
        if name in block["classes"]:
            np.testing.assert_allclose(ap[c], block["ap"][name], rtol=0, atol=tol, err_msg=name)
        else:
            assert np.isnan(ap[c]).all(), name
    np.testing.assert_allclose(result["map"].numpy(), block["mAP"], rtol=0, atol=tol)
    assert abs(float(result["map_avg"]) - block["average_mAP"]) <= tol


def tolerance(fx: dict) -> float:
    return 1e-6 if fx["generator"] else 1e-9


def anet_metric(gt: GroundTruth, thresholds: list[float], **kw) -> TemporalDetectionMAP:
    return TemporalDetectionMAP(gt, thresholds, protocol="anet", **kw)


# ---------------------------------------------------------------------------------------------
# protocol anet: ActivityNet fixtures


def test_fixture_folders_present() -> None:
    assert len(MAP_FILES) >= 17, f"map cases missing from {reference.MANIFEST}"
    assert len(LOCMAP_FILES) >= 4, f"locmap cases missing from {reference.MANIFEST}"
    for path in [MAP_DIR / n for n in MAP_FILES] + [WTALC_DIR / n for n in LOCMAP_FILES]:
        assert path.is_file(), path
    assert (THUMOS_ANNOTATIONS / "segments.npy").is_file()


@pytest.mark.parametrize("key", THRESHOLD_SETS)
@pytest.mark.parametrize("name", [n for n in MAP_FILES if n not in DEGENERATE])
def test_anet_fixture(name: str, key: str) -> None:
    fx = read_json(MAP_DIR / name)
    gt, dets = map_case(fx)
    block = fx["expected"][key]
    metric = anet_metric(gt, block["tiou_thresholds"])
    feed(metric, dets, seed=len(name))
    check_expected(metric.compute(), block, fx["class_names"], tolerance(fx))
    # the functional form (rows in input order) agrees
    ap = detection_average_precision(gt, *dets, block["tiou_thresholds"])
    np.testing.assert_allclose(ap, metric.compute()["ap"].numpy(), rtol=0, atol=tolerance(fx))


def test_anet_predicted_label_without_gt_is_ignored() -> None:
    fx = read_json(MAP_DIR / "08_class_with_predictions_no_gt.json.gz")
    assert "ignored" in fx["expected_policy"]
    gt, dets = map_case(fx)
    no_gt = [c for c in fx["class_names"] if c not in fx["expected"]["tiou_0.1_0.7"]["classes"]]
    assert no_gt and np.isin([fx["class_names"].index(c) for c in no_gt], dets[3]).all()
    for key in THRESHOLD_SETS:
        metric = anet_metric(gt, fx["expected"][key]["tiou_thresholds"])
        feed(metric, dets)
        check_expected(metric.compute(), fx["expected"][key], fx["class_names"], 1e-9)


@pytest.mark.parametrize("name", DEGENERATE)
def test_anet_degenerate_predictions_rejected(name: str) -> None:
    fx = read_json(MAP_DIR / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fixture 10 has an inverted GT segment (warned about elsewhere)
        gt, dets = map_case(fx)
        metric = anet_metric(gt, [0.5])
    with pytest.raises(ValueError, match=r"row \d+ \(video '.+', label '.+'\): (start .* > end|zero-length)"):
        metric.update(*dets)


@pytest.mark.parametrize("name", DEGENERATE)
def test_anet_degenerate_predictions_sanitised(name: str) -> None:
    """Degenerate predictions replaced by a far-away (unmatchable) segment: officially they are FPs in
    fixture 10, and fixture 11's NaN quirk becomes its `expected_if_nan_iou_treated_as_zero` block."""
    fx = read_json(MAP_DIR / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gt, dets = map_case(fx)
        anet_metric(gt, [0.5])
    inverted_gt = (gt.segments[:, 0] > gt.segments[:, 1]).any()
    assert any("inverted GT" in str(w.message) for w in caught) == inverted_gt
    video, start, end, label, score = (c.copy() for c in dets)
    bad = start >= end
    assert bad.any()
    start[bad], end[bad] = 1e6, 1e6 + 1.0
    blocks = fx.get("expected_if_nan_iou_treated_as_zero", fx["expected"])
    for key in THRESHOLD_SETS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric = anet_metric(gt, blocks[key]["tiou_thresholds"])
        feed(metric, (video, start, end, label, score))
        check_expected(metric.compute(), blocks[key], fx["class_names"], 1e-9)


def test_anet_ambiguous_filter() -> None:
    fx = read_json(MAP_DIR / "17_thumos_ambiguous_filtering.json.gz")
    gt, dets = map_case(fx)
    assert len(gt.ambiguous) == len(fx["ambiguous"]["video_id"]) > 0
    for key in THRESHOLD_SETS:
        thresholds = fx["expected"][key]["tiou_thresholds"]
        for flag, block in ((False, fx["expected"][key]), (True, fx["expected_after_ambiguous_filter"][key])):
            metric = anet_metric(gt, thresholds, filter_ambiguous=flag)
            feed(metric, dets)
            check_expected(metric.compute(), block, fx["class_names"], 1e-9)
        # the filter drops exactly the rows the fixture marks as removed
        kept = np.asarray(fx["kept_after_ambiguous_filter"])
        reduced = anet_metric(gt, thresholds)
        feed(reduced, tuple(c[kept] for c in dets))
        check_expected(reduced.compute(), fx["expected_after_ambiguous_filter"][key], fx["class_names"], 1e-9)


def test_anet_no_clipping_to_duration() -> None:
    """Fixture 18: the metric never clips (matches `expected`); clipping is the caller's choice."""
    fx = read_json(MAP_DIR / "18_segments_outside_video.json.gz")
    gt, (video, start, end, label, score) = map_case(fx)
    assert ((start < 0) | (end > gt.durations[video])).any()
    clipped = (
        video,
        np.clip(start, 0, gt.durations[video]),
        np.clip(end, 0, gt.durations[video]),
        label,
        score,
    )
    for key in THRESHOLD_SETS:
        thresholds = fx["expected"][key]["tiou_thresholds"]
        ap = detection_average_precision(gt, video, start, end, label, score, thresholds)
        ap_clipped = detection_average_precision(gt, *clipped, thresholds)
        for c, name in enumerate(fx["class_names"]):
            np.testing.assert_allclose(ap[c], fx["expected"][key]["ap"][name], atol=1e-9)
            np.testing.assert_allclose(
                ap_clipped[c], fx["expected_if_predictions_clipped_to_duration"][key]["ap"][name], atol=1e-9
            )


def test_thresholds_are_exact_decimals() -> None:
    fx = read_json(MAP_DIR / "01_basic_single_class.json.gz")
    assert (
        list(exact_thresholds(np.arange(0.1, 1.0, 0.1)[:7]))
        == fx["expected"]["tiou_0.1_0.7"]["tiou_thresholds"]
    )
    assert (
        list(exact_thresholds(np.linspace(0.5, 0.95, 10)))
        == fx["expected"]["tiou_0.5_0.95"]["tiou_thresholds"]
    )
    # GT [0, 10] vs prediction [0, 3]: tIoU = 3/10, exactly the double 0.3; np.arange's
    # 0.30000000000000004 would turn this TP into an FP
    gt = GroundTruth(["a"], ["v"], [10.0], [[0.0, 10.0]], [0], [0])
    arange_thr = np.arange(0.1, 1.0, 0.1)[2]
    assert arange_thr > 0.3
    ap = detection_average_precision(gt, [0], [0.0], [3.0], [0], [1.0], [arange_thr])
    assert ap[0, 0] == 1.0


# ---------------------------------------------------------------------------------------------
# protocol wtalc: official ISSF getLocMAP fixtures


@pytest.mark.parametrize("name", LOCMAP_FILES)
def test_wtalc_locmap_fixture(name: str) -> None:
    fx = read_json(WTALC_DIR / name)
    assert fx["kind"] == "locmap"
    gt, dets = locmap_case(fx)
    thresholds = fx["protocol"]["iou_thresholds"]
    derived = fx["derived_not_official"]["per_class_ap"]

    official = TemporalDetectionMAP(gt, thresholds, protocol="wtalc", compat_locmap_return0=True)
    feed(official, dets, seed=1)
    summary = official.summarize()
    got = [summary[f"mAP@{t:g}"] for t in thresholds]
    np.testing.assert_allclose(got, fx["expected"]["getLocMAP_percent"], rtol=1e-12, atol=1e-9)

    fixed = TemporalDetectionMAP(gt, thresholds, protocol="wtalc")
    feed(fixed, dets, seed=2)
    result = fixed.compute()
    np.testing.assert_allclose(result["ap"].numpy()[derived["class_ids"]], derived["ap"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["map"].numpy() * 100, derived["mean_percent"], rtol=1e-12, atol=1e-9)
    empty_class = not all(len(p) for p in fx["input"]["seg_preds"])
    assert empty_class == (name.startswith("locmap_04"))
    if empty_class:
        assert all(v == 0 for v in fx["expected"]["getLocMAP_percent"])
        assert (result["map"].numpy() > 0).all()


def test_wtalc_matches_official_getlocmap_on_seconds_detections() -> None:
    """Fixture 20's informational block: the official getLocMAP on the same seconds detections
    (rounded to snippets, predictions on videos without GT dropped)."""
    fx = read_json(MAP_DIR / "20_random_thumos_scale.json.gz")
    info = fx["informational_wtalc_style"]
    gt, dets = map_case(fx)
    metric = TemporalDetectionMAP(gt, info["tiou_thresholds"], protocol="wtalc")
    feed(metric, dets)
    np.testing.assert_allclose(metric.compute()["map"].numpy() * 100, info["mAP_percent"], rtol=1e-12)
    video_has_gt = np.isin(np.arange(gt.num_videos), gt.segment_video)
    assert (~video_has_gt[dets[0]]).sum() == info["predictions_dropped_no_gt_video"]


def test_wtalc_ambiguous_filter_on_snippets() -> None:
    """An ambiguous interval (seconds -> snippets [10, 15)) removes a detection sharing one snippet
    with it, whatever its class, and keeps one that only touches it."""
    s = 0.64
    gt = GroundTruth(
        ["a", "b"],
        ["v"],
        [100.0],
        [[15 * s, 20 * s], [40 * s, 45 * s]],
        [0, 0],
        [0, 1],
        ambiguous=[[10 * s, 15 * s]],
        ambiguous_video=[0],
    )
    dets = (
        np.array([0, 0, 0, 0]),
        np.array([14, 15, 12, 40]) * s,
        np.array([20, 20, 18, 45]) * s,
        np.array([0, 0, 1, 1]),
        np.array([0.9, 0.8, 0.95, 0.5]),
    )
    removed = np.array([True, False, True, False])
    for protocol in ("wtalc", "anet"):
        filtered = detection_average_precision(gt, *dets, [0.5], protocol=protocol, filter_ambiguous=True)
        pruned = detection_average_precision(gt, *(c[~removed] for c in dets), [0.5], protocol=protocol)
        unfiltered = detection_average_precision(gt, *dets, [0.5], protocol=protocol)
        np.testing.assert_array_equal(filtered, pruned)
        assert not np.array_equal(filtered, unfiltered)


# ---------------------------------------------------------------------------------------------
# independent loop implementation of both official algorithms (with the documented tie rules)


def loop_ap(
    gt: GroundTruth, dets: tuple[np.ndarray, ...], thresholds: list[float], protocol: str
) -> np.ndarray:
    video, start, end, label, score = dets
    gs, ge = gt.segments[:, 0], gt.segments[:, 1]
    if protocol == "wtalc":
        gs, ge = np.round(gs * 25 / 16), np.round(ge * 25 / 16)
        start, end = np.round(start * 25 / 16), np.round(end * 25 / 16)
        keep = np.isin(video, gt.segment_video)
        video, start, end, label, score = video[keep], start[keep], end[keep], label[keep], score[keep]
    ap = np.full((gt.num_classes, len(thresholds)), np.nan)
    for c in range(gt.num_classes):
        g_idx = np.flatnonzero(gt.segment_label == c)
        if len(g_idx) == 0:
            continue
        d_idx = np.flatnonzero(label == c)
        order = (
            np.argsort(-score[d_idx], kind="stable")
            if protocol == "wtalc"
            else np.argsort(score[d_idx], kind="stable")[::-1]
        )
        d_idx = d_idx[order]
        for t, thr in enumerate(thresholds):
            taken = set()
            tp = []
            for d in d_idx:
                cands = [g for g in g_idx if gt.segment_video[g] == video[d]]
                if protocol == "wtalc":
                    best, best_iou = None, 0.0
                    for g in cands:
                        a, b = set(range(int(gs[g]), int(ge[g]))), set(range(int(start[d]), int(end[d])))
                        iou = len(a & b) / len(a | b) if a | b else 0.0
                        if g not in taken and iou >= thr and iou > best_iou:
                            best, best_iou = g, iou
                else:
                    ious = []
                    for g in cands:
                        inter = max(0.0, min(end[d], ge[g]) - max(start[d], gs[g]))
                        ious.append(inter / ((ge[g] - gs[g]) + (end[d] - start[d]) - inter))
                    best = None
                    for j in np.argsort(np.asarray(ious), kind="stable")[::-1]:
                        if ious[j] < thr:
                            break
                        if cands[j] not in taken:
                            best = cands[j]
                            break
                tp.append(best is not None)
                if best is not None:
                    taken.add(best)
            tp = np.asarray(tp, dtype=float)
            if len(tp) == 0:
                ap[c, t] = 0.0
                continue
            tpc, fpc = np.cumsum(tp), np.cumsum(1 - tp)
            prec, rec = tpc / (tpc + fpc), tpc / len(g_idx)
            mprec, mrec = np.r_[0, prec, 0], np.r_[0, rec, 1]
            for i in range(len(mprec) - 2, -1, -1):
                mprec[i] = max(mprec[i], mprec[i + 1])
            idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
            ap[c, t] = np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])
    return ap


def tie_heavy_case(seed: int) -> tuple[GroundTruth, tuple[np.ndarray, ...]]:
    """Coarse grids: many equal scores, equal tIoUs, overlapping same-class GT, IoUs on thresholds."""
    rng = np.random.default_rng(seed)
    n_vid, n_cls, n_gt, n_det = 6, 3, 24, 300
    g_start = rng.integers(0, 16, n_gt) * 0.64
    g_len = rng.integers(1, 6, n_gt) * 0.64
    gt = GroundTruth(
        [f"c{i}" for i in range(n_cls + 1)],
        [f"v{i}" for i in range(n_vid)],
        [30.0] * n_vid,
        np.c_[g_start, g_start + g_len],
        rng.integers(0, n_vid - 1, n_gt),
        rng.integers(0, n_cls, n_gt),
    )
    start = rng.integers(0, 18, n_det) * 0.64
    dets = (
        rng.integers(0, n_vid, n_det),
        start,
        start + rng.integers(1, 6, n_det) * 0.64,
        rng.integers(0, n_cls + 1, n_det),
        rng.integers(0, 6, n_det) / 5.0,
    )
    return gt, dets


@pytest.mark.parametrize("protocol", ["anet", "wtalc"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_implementation_with_ties(protocol: str, seed: int) -> None:
    gt, dets = tie_heavy_case(seed)
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75]
    order = np.lexsort((np.arange(len(dets[0])), dets[0]))  # canonical order: by video, stable
    canonical = tuple(c[order] for c in dets)
    expected = loop_ap(gt, canonical, thresholds, protocol)
    np.testing.assert_allclose(
        detection_average_precision(gt, *canonical, thresholds, protocol=protocol),
        expected,
        rtol=0,
        atol=1e-12,
    )
    # the metric's tie order does not depend on the order of the update calls
    metric = TemporalDetectionMAP(gt, thresholds, protocol=protocol)
    feed(metric, dets, seed=seed)
    np.testing.assert_allclose(metric.compute()["ap"].numpy(), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# de-duplication, summary, result layout


def test_duplicated_video_counts_once() -> None:
    fx = read_json(MAP_DIR / "19_random_small.json.gz")
    gt, dets = map_case(fx)
    block = fx["expected"]["tiou_0.1_0.7"]
    metric = anet_metric(gt, block["tiou_thresholds"])
    feed(metric, dets)
    first = dets[0] == dets[0][0]
    metric.update(*(torch.as_tensor(c[first]) for c in dets))  # a padded sampler repeats a video
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_expected(metric.compute(), block, fx["class_names"], 1e-6)

    # a copy of different size is a misuse: warned about, and the first copy is kept
    metric.update(*(torch.as_tensor(c[first][:3]) for c in dets))
    with pytest.warns(UserWarning, match="several updates"):
        result = metric.compute()
    check_expected(result, block, fx["class_names"], 1e-6)


def test_summary_and_reset() -> None:
    fx = read_json(MAP_DIR / "19_random_small.json.gz")
    gt, dets = map_case(fx)
    ranges = {"AVG(0.1:0.5)": (0.1, 0.5), "AVG(0.3:0.7)": (0.3, 0.7), "AVG(0.1:0.7)": (0.1, 0.7)}
    thresholds = [0.1 * k for k in range(1, 8)]
    metric = anet_metric(gt, thresholds, average_ranges=ranges)
    feed(metric, dets)
    result = metric.compute()
    assert result["ap"].dtype == torch.float64 and result["ap"].shape == (len(fx["class_names"]), 7)
    maps = result["map"].numpy() * 100
    summary = metric.summarize(result)
    assert list(summary) == [f"mAP@{t}" for t in ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7")] + [
        "AVG",
        *ranges,
    ]
    np.testing.assert_allclose(
        [summary[f"mAP@{t:g}"] for t in exact_thresholds(thresholds)], maps, rtol=1e-15
    )
    assert summary["AVG"] == pytest.approx(maps.mean()) == pytest.approx(float(result["map_avg"]) * 100)
    assert summary["AVG(0.1:0.5)"] == pytest.approx(maps[:5].mean())
    assert summary["AVG(0.3:0.7)"] == pytest.approx(maps[2:].mean())
    assert summary["AVG(0.1:0.7)"] == pytest.approx(maps.mean())
    assert summarize(result) == {k: v for k, v in summary.items() if k not in ranges}
    metric.reset()
    metric.update([0], [1.0], [2.0], [0], [0.5])
    assert float(metric.compute()["map_avg"]) < float(result["map_avg"])


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.fixture
def small_metric() -> TemporalDetectionMAP:
    gt = GroundTruth(["walk", "run"], ["va", "vb"], [10.0, 10.0], [[1.0, 2.0], [3.0, 5.0]], [0, 1], [0, 1])
    return anet_metric(gt, [0.5])


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("score", float("nan"), r"row 1 \(video 'vb', label 'run'\): score is nan"),
        ("score", float("inf"), r"row 1 \(video 'vb', label 'run'\): score is inf"),
        ("start", float("nan"), r"row 1 \(video 'vb', label 'run'\): start is nan"),
        ("end", float("-inf"), r"row 1 \(video 'vb', label 'run'\): end is -inf"),
        ("start", 9.0, r"row 1 \(video 'vb', label 'run'\): start 9.0 > end 4.0"),
        ("end", 3.0, r"row 1 \(video 'vb', label 'run'\): zero-length segment"),
        ("label", 2, r"row 1 \(video 'vb'\): label 2 is not a class index"),
        ("label", -1, r"row 1 \(video 'vb'\): label -1 is not a class index"),
        ("video", 5, r"row 1: video index 5 is not a video of the ground truth"),
        ("video", 0.5, r"row 1: video index 0.5 is not an integer index"),
    ],
)
def test_bad_detection_rejected(
    small_metric: TemporalDetectionMAP, column: str, value: float, message: str
) -> None:
    cols = {
        "video": [0.0, 1.0],
        "start": [1.0, 3.0],
        "end": [2.0, 4.0],
        "label": [0.0, 1.0],
        "score": [0.9, 0.8],
    }
    cols[column][1] = value
    with pytest.raises(ValueError, match=message):
        small_metric.update(*(torch.tensor(cols[k], dtype=torch.float64) for k in cols))
    small_metric.update([0], [1.0], [2.0], [0], [0.5])  # a rejected batch leaves the metric usable
    assert float(small_metric.compute()["ap"][0, 0]) == 1.0


def test_bad_shapes_and_videos(small_metric: TemporalDetectionMAP) -> None:
    with pytest.raises(ValueError, match="same length"):
        small_metric.update([0, 1], [1.0], [2.0], [0], [0.5])
    with pytest.raises(ValueError, match="1-D"):
        small_metric.update([[0]], [[1.0]], [[2.0]], [[0]], [[0.5]])
    with pytest.raises(ValueError, match="video 'vb' is not in `videos`"):
        small_metric.update([1], [1.0], [2.0], [0], [0.5], videos=[0])
    with pytest.raises(ValueError, match="videos contains index 7"):
        small_metric.update([1], [1.0], [2.0], [0], [0.5], videos=[1, 7])


def test_bad_ground_truth_and_options() -> None:
    empty = GroundTruth(["a"], ["v"], [10.0], np.zeros((0, 2)), [], [])
    with pytest.raises(ValueError, match="no GT segment"):
        TemporalDetectionMAP(empty, [0.5])
    nan_gt = GroundTruth(["a"], ["v"], [10.0], [[1.0, np.nan]], [0], [0])
    with pytest.raises(ValueError, match=r"segment 0 \(video 'v', label 'a'\) \[1.0, nan\] is not finite"):
        TemporalDetectionMAP(nan_gt, [0.5])
    ok = GroundTruth(["a"], ["v"], [10.0], [[1.0, 2.0]], [0], [0])
    with pytest.warns(UserWarning, match="inverted GT"):
        TemporalDetectionMAP(GroundTruth(["a"], ["v"], [10.0], [[3.0, 2.0]], [0], [0]), [0.5])
    with pytest.raises(ValueError, match="protocol"):
        TemporalDetectionMAP(ok, [0.5], protocol="voc")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TemporalDetectionMAP(ok, [0.0, 0.5])
    with pytest.raises(ValueError, match="compat_locmap_return0"):
        TemporalDetectionMAP(ok, [0.5], compat_locmap_return0=True)
    with pytest.raises(ValueError, match="contains no tIoU threshold"):
        TemporalDetectionMAP(ok, [0.5], average_ranges={"AVG(0.1:0.3)": (0.1, 0.3)})


# ---------------------------------------------------------------------------------------------
# classification mAP


def wtalc_get_ap(conf: np.ndarray, labels: np.ndarray) -> float:
    """W-TALC getAP: precision at each positive after sorting by score, averaged."""
    order = np.argsort(-conf)
    tp = labels[order] == 1
    prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    return float(np.sum(prec * tp) / tp.sum())


def test_classification_map() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((40, 6))  # distinct scores: no tie-order difference
    labels = (rng.random((40, 6)) < 0.3).astype(np.int64)
    labels[:, 5] = 0  # a class without positives is left out
    labels[0, :5] = 1
    expected = 100 * np.mean([wtalc_get_ap(scores[:, c], labels[:, c]) for c in range(5)])
    # torchmetrics accumulates in float32
    assert classification_map(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(
        expected, rel=1e-6
    )
    assert classification_map(scores, labels) == pytest.approx(expected, rel=1e-6)
    # the metric runs log (accumulated over batches) is the same definition
    metric = ClassificationMAP()
    metric.update(torch.from_numpy(scores[:15]).float(), torch.from_numpy(labels[:15]))
    metric.update(torch.from_numpy(scores[15:]).float(), torch.from_numpy(labels[15:]))
    assert 100 * float(metric.compute()) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="no class"):
        classification_map(scores, np.zeros_like(labels))
    with pytest.raises(ValueError, match="NaN"):
        classification_map(np.full((40, 6), np.nan), labels)
