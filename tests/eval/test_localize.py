"""Localization: cases of the official W-TALC evaluation, a loop-based reference of the official rules, options."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from issf.eval.intervals import overlaps_any, seconds_to_snippet_range
from issf.eval.localize import (
    DEFAULT_CAS_THRESHOLDS,
    Detections,
    LocalizationConfig,
    localize,
    localize_video,
    nms_iou,
    nms_official,
    soft_nms,
    upsample_cas,
)
from tests import reference

ACTLOC_CASES = reference.names(reference.WTALC_CASES, "actloc_*.json.gz")


def _load(name: str) -> dict:
    return reference.case(reference.WTALC_CASES, name)


def actloc_inputs(case: dict) -> tuple[list[np.ndarray], np.ndarray]:
    """``frm_pred`` arrays and ``vid_pred`` decoded from a case (data/reference/PROVENANCE.md):
    float32 values, either decimals or integers times ``scale``; unlisted entries are ``fill``."""
    vid_pred = np.asarray(case["input"]["vid_pred"]["values"], dtype=np.float64).astype(np.float32)
    fb = case["input"]["frm_pred"]
    cas = []
    for v in fb["videos"]:
        f = np.full((v["T"], fb["num_columns"]), fb["fill"], dtype=np.float32)
        for c, vals in v["columns"].items():
            if fb["encoding"] == "int_scaled":
                f[:, int(c)] = np.asarray(vals, np.float32) * np.float32(fb["scale"])
            else:
                f[:, int(c)] = np.asarray(vals, np.float64).astype(np.float32)
        cas.append(f)
    return cas, vid_pred


def _ambiguous_text(case: dict) -> str | None:
    ann = case["annotations"]
    if ann["source"] == "inline":
        return ann["ambiguous_test_txt"]
    assert ann["source"] == "thumos14_reduced", ann["source"]
    return (reference.THUMOS_WTALC / "Ambiguous_test.txt").read_text()


def _official_rows(case: dict) -> dict[int, list[tuple[int, int, int, float]]]:
    """Our proposals per class id, indexed like the official output and ambiguous-filtered."""
    cas, vid_pred = actloc_inputs(case)
    args, protocol = case["args"], case["protocol"]
    assert tuple(protocol["act_thresh_cas"]) == DEFAULT_CAS_THRESHOLDS  # exact doubles
    cfg = LocalizationConfig(
        class_threshold=args["class_threshold"], nms_threshold=protocol["nms_overlap_threshold"]
    )
    det = localize(cas, vid_pred, cfg)

    out_index = np.array(
        [-1 if v["output_index"] is None else v["output_index"] for v in case["test_videos"]]
    )
    classes = case["expected"]["getActLoc"]["class_of_position"]
    det = det.select((out_index[det.video] >= 0) & np.isin(det.label, classes))
    video = out_index[det.video]

    text = _ambiguous_text(case)
    if text:
        name_to_out = {
            v["name"]: v["output_index"] for v in case["test_videos"] if v["output_index"] is not None
        }
        amb = [line.split(" ") for line in text.splitlines()]
        amb = [(name_to_out[f[0]], float(f[2]), float(f[3])) for f in amb if f and f[0] in name_to_out]
        if amb:
            a = np.array(amb)
            lo = seconds_to_snippet_range(a[:, 1], 0.64)
            hi = seconds_to_snippet_range(a[:, 2], 0.64)
            drop = overlaps_any(video, det.start, det.end, a[:, 0].astype(np.int64), lo, hi)
            det, video = det.select(~drop), video[~drop]

    rows: dict[int, list] = {c: [] for c in classes}
    for v, s, e, c, sc in zip(video, det.start, det.end, det.label, det.score):
        assert float(s).is_integer() and float(e).is_integer()
        rows[int(c)].append((int(v), int(s), int(e), float(sc)))
    return rows


def test_all_actloc_cases_found() -> None:
    assert len(ACTLOC_CASES) >= 5, ACTLOC_CASES


@pytest.mark.parametrize("name", ACTLOC_CASES)
def test_actloc_fixture(name: str) -> None:
    case = _load(name)
    assert case["kind"] == "actloc"
    expected = case["expected"]["getActLoc"]
    ours = _official_rows(case)
    near_ties = expected.get("near_tie_ranges", {})
    for pos, c in enumerate(expected["class_of_position"]):
        exp = [(int(v), int(s), int(e), float(sc)) for v, s, e, sc in expected["proposals"][pos]]
        got = ours[c]
        # proposals: identical multisets keyed by (video, start, end)
        assert Counter(r[:3] for r in got) == Counter(r[:3] for r in exp), f"{name}: class {c}"
        # scores within 1e-6, matched by key (keys are unique within a class)
        exp_score = {r[:3]: r[3] for r in exp}
        for r in got:
            assert abs(r[3] - exp_score[r[:3]]) <= 1e-6, f"{name}: class {c}, {r}"
        # order: descending score, only near-tie ranges may be permuted
        got_sorted = [got[i][:3] for i in np.argsort([-r[3] for r in got], kind="stable")]
        exp_keys = [r[:3] for r in exp]
        free = np.ones(len(exp), dtype=bool)
        for lo, hi in near_ties.get(str(pos), []):
            free[lo:hi] = False
            assert Counter(got_sorted[lo:hi]) == Counter(exp_keys[lo:hi])
        assert [k for k, f in zip(got_sorted, free) if f] == [k for k, f in zip(exp_keys, free) if f]


def test_nms_fixture() -> None:
    case = _load("nms_01_hand")
    for c in case["cases"]:
        segs = np.asarray(c["segs"], dtype=c["dtype"]).reshape(-1, 4)
        pick = nms_official(segs[:, 1], segs[:, 2], segs[:, 3], c["overlap_threshold"])
        assert pick.tolist() == c["expected_pick"], c["name"]


# ---------------------------------------------------------------------------------------------
# A slow, plainly written reference of the official rules (docs/method.md, "Localization")


def reference_video(cas: np.ndarray, vs: np.ndarray, thr: list[float]) -> list[tuple[int, int, int, float]]:
    """Rows (class, start, stored end, score) of one video, per class in NMS pick order."""
    t = cas.shape[0]
    out = []
    for c in range(cas.shape[1]):
        if vs[c] < 0.1:
            continue
        cands = []
        for theta in thr:
            above = [float(cas[i, c]) > theta for i in range(t)]
            i = 0
            while i < t:
                if not above[i]:
                    i += 1
                    continue
                s = i
                while i < t and above[i]:
                    i += 1
                e = i
                n = e - s
                if n < 2:
                    continue
                inner = np.mean(cas[s : e + 1, c].astype(np.float64))
                lo = max(0, int(s - 0.25 * n))
                hi = min(t - 1, int(e + 0.25 * n + 1))
                outer_idx = list(range(lo, s)) + list(range(e + 1, hi))
                outer = np.mean(cas[outer_idx, c].astype(np.float64)) if outer_idx else 0.0
                cands.append((s, e + 1, float(inner - outer)))
        # greedy: a candidate survives unless a kept, higher-ranked box covers > 0.45 of it
        kept = []
        for s, e, sc in sorted(cands, key=lambda r: (-r[2], r[0], r[1])):
            if all((min(e, ke) - max(s, ks) + 1) / (e - s + 1) <= 0.45 for ks, ke, _ in kept):
                kept.append((s, e, sc))
        out += [(c, s, e, sc) for s, e, sc in kept]
    return out


def _random_cas(rng: np.random.Generator, t: int, c: int) -> np.ndarray:
    """Smooth-ish CAS around the thresholds, dyadic (multiples of 2**-14) so sums are exact."""
    base = rng.uniform(0, 0.045) + np.cumsum(rng.normal(0, 0.008, (t, c)), axis=0)
    spikes = rng.random((t, c)) < 0.1
    cas = np.clip(np.where(spikes, rng.uniform(0, 0.06, (t, c)), base), 0, 0.06)
    return (np.round(cas * 2**14) / 2**14).astype(np.float32)


def _thresholds_hit(rng: np.random.Generator, cas: np.ndarray) -> np.ndarray:
    """Put some CAS values exactly on float32(theta) (strict > in float64 matters there)."""
    hits = rng.random(cas.shape) < 0.1
    values = np.asarray(DEFAULT_CAS_THRESHOLDS, np.float32)[rng.integers(0, 20, cas.shape)]
    return np.where(hits, values, cas).astype(np.float32)


def _ours_rows(det: Detections) -> list[tuple[int, int, int, float]]:
    return [
        (int(c), int(s), int(e), float(sc)) for s, e, c, sc in zip(det.start, det.end, det.label, det.score)
    ]


@pytest.mark.parametrize("seed", range(8))
def test_parity_with_loop_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = list(range(1, 41)) + list(rng.integers(41, 300, 40))
    for t in lengths:
        cas = _random_cas(rng, int(t), 3)
        if rng.random() < 0.5:
            cas = _thresholds_hit(rng, cas)
        vs = rng.choice(np.array([0.05, 0.0999999940395, 0.1, 0.5], np.float32), 3)
        vs[rng.integers(3)] = np.float32(0.1)  # at least one class, exactly float32(0.1) kept
        ref = reference_video(cas, vs, list(DEFAULT_CAS_THRESHOLDS))
        got = _ours_rows(localize_video(cas, vs))
        assert got == ref, f"T={t}"  # same proposals, same pick order, bit-identical scores


def test_parity_float32_values() -> None:
    rng = np.random.default_rng(123)
    for t in list(range(1, 12)) + [50, 120, 333]:
        cas = rng.uniform(0, 0.05, (t, 2)).astype(np.float32)
        vs = np.array([0.3, 0.7], np.float32)
        ref = reference_video(cas, vs, list(DEFAULT_CAS_THRESHOLDS))
        got = _ours_rows(localize_video(cas, vs))
        assert [r[:3] for r in got] == [r[:3] for r in ref]
        np.testing.assert_allclose([r[3] for r in got], [r[3] for r in ref], rtol=0, atol=1e-12)


def test_official_edge_cases() -> None:
    one = LocalizationConfig(cas_thresholds=(0.2,))
    vs = np.array([1.0])
    assert len(localize_video(np.array([[0.9]]), vs, one)) == 0  # T = 1: a run of 1 snippet
    d = localize_video(np.array([[0.5], [0.3]]), vs, one)  # T = 2, whole video
    assert (d.start.tolist(), d.end.tolist()) == ([0.0], [3.0])
    assert d.score[0] == pytest.approx(0.4)  # no outer snippets -> outer mean 0
    # T = 3, run touching the end: outer = [0] only (snippet T-1 is never outer)
    d = localize_video(np.array([[0.1], [0.3], [0.5]]), vs, one)
    assert (d.start.tolist(), d.end.tolist()) == ([1.0], [4.0])
    assert d.score[0] == pytest.approx(0.4 - 0.1)
    # float32(0.005) is below the double 0.005: strict > in float64
    d = localize_video(np.full((4, 1), np.float32(0.005)), vs, LocalizationConfig(cas_thresholds=(0.005,)))
    assert len(d) == 0
    d = localize_video(np.full((4, 1), np.float32(0.003)), vs, LocalizationConfig(cas_thresholds=(0.003,)))
    assert len(d) == 1  # float32(0.003) > 0.003 in float64
    # video score exactly at the class threshold is kept, just below is skipped
    cas = np.array([[0.5], [0.5], [0.0]])
    assert len(localize_video(cas, np.array([0.1]), one)) == 1
    assert len(localize_video(cas, np.array([np.nextafter(0.1, 0)]), one)) == 0


# ---------------------------------------------------------------------------------------------
# Options, checked on hand-derived cases

X10 = np.array([0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.0, 0.1, 0.1, 0.1])[:, None]


def test_compat_vs_clean_geometry() -> None:
    vs = np.array([1.0])
    # compat: run [2, 6), inner mean(x[2:7]) = 2/5, outer [1] + [7] = 0.1, stored end 7
    d = localize_video(X10, vs, LocalizationConfig(cas_thresholds=(0.2,)))
    assert (d.start.tolist(), d.end.tolist()) == ([2.0], [7.0])
    assert d.score[0] == pytest.approx(0.4 - 0.1)
    # clean: inner mean(x[2:6]) = 0.5, outer ceil(4/4) = 1 snippet each side: [1] + [6] = 0.05
    d = localize_video(X10, vs, LocalizationConfig(cas_thresholds=(0.2,), compat_end_plus_one=False))
    assert (d.start.tolist(), d.end.tolist()) == ([2.0], [6.0])
    assert d.score[0] == pytest.approx(0.5 - 0.05)
    # clean, L = 2 at the video end: outer = [0] only
    cfg = LocalizationConfig(cas_thresholds=(0.2,), compat_end_plus_one=False)
    d = localize_video(np.array([[0.1], [0.3], [0.3]]), vs, cfg)
    assert (d.start.tolist(), d.end.tolist(), d.score[0]) == ([1.0], [3.0], pytest.approx(0.2))


def test_contrast_x_video() -> None:
    cfg = LocalizationConfig(cas_thresholds=(0.2,), score="contrast_x_video")
    d = localize_video(X10, np.array([0.5]), cfg)
    assert d.score[0] == pytest.approx(0.5 * 0.3)


def test_upsample_linear() -> None:
    x = np.array([0.0, 1.0, 1.0, 0.0])[:, None]
    up = upsample_cas(x, 2)[:, 0]
    np.testing.assert_allclose(up, [0, 0.25, 0.75, 1, 1, 0.75, 0.25, 0])
    # theta 0.5: samples 2..5 above -> [2, 6) samples = [1, 3) snippets (4 samples >= 2 snippets)
    cfg = LocalizationConfig(cas_thresholds=(0.5,), upsample=2, compat_end_plus_one=False)
    d = localize_video(x, np.array([1.0]), cfg)
    assert (d.start.tolist(), d.end.tolist()) == ([1.0], [3.0])
    assert d.score[0] == pytest.approx(0.875 - 0.25)  # outer: samples 1 and 6
    # compat: inner samples 2..6 = 3.75/5, outer sample 1 only (after-region capped), end 7 samples
    d = localize_video(x, np.array([1.0]), LocalizationConfig(cas_thresholds=(0.5,), upsample=2))
    assert (d.start.tolist(), d.end.tolist(), d.score[0]) == ([1.0], [3.5], pytest.approx(0.75 - 0.25))
    # 2 samples above (< 2 snippets) are dropped
    cfg = LocalizationConfig(cas_thresholds=(0.7,), upsample=2)
    assert len(localize_video(np.array([0.0, 1.0, 0.0])[:, None], np.array([1.0]), cfg)) == 0


def _plain_greedy(s, e, sc, thr, ratio) -> list[int]:
    kept: list[int] = []
    for j in sorted(range(len(sc)), key=lambda k: -sc[k]):
        if all(ratio(s[i], e[i], s[j], e[j]) <= thr for i in kept):
            kept.append(j)
    return kept


@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_greedy_nms_paths_agree(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import issf.eval.localize as loc

    rng = np.random.default_rng(n)
    s = rng.integers(0, 200, n).astype(float)
    e = s + rng.integers(1, 40, n)
    sc = rng.permutation(n) / max(n, 1)  # distinct scores

    def official(si, ei, sj, ej):
        return max(0.0, min(ei, ej) - max(si, sj) + 1) / (ej - sj + 1)

    def iou(si, ei, sj, ej):
        inter = max(0.0, min(ei, ej) - max(si, sj))
        return inter / ((ei - si) + (ej - sj) - inter)

    for nms, ratio, thr in [(nms_official, official, 0.45), (nms_iou, iou, 0.3)]:
        expected = _plain_greedy(s, e, sc, thr, ratio)
        assert nms(s, e, sc, thr).tolist() == expected  # pairwise-matrix path
        monkeypatch.setattr(loc, "_PAIRWISE_MAX", 0)
        assert nms(s, e, sc, thr).tolist() == expected  # box-by-box path
        monkeypatch.undo()


def test_nms_iou_and_official_differ() -> None:
    s, e, sc = np.array([0.0, 5.0]), np.array([20.0, 8.0]), np.array([0.9, 0.8])
    assert nms_official(s, e, sc, 0.45).tolist() == [0]  # 4/4 of the candidate is covered
    assert nms_iou(s, e, sc, 0.45).tolist() == [0, 1]  # IoU 3/20
    s, e, sc = np.array([0.0, 2.0, 10.0]), np.array([10.0, 12.0, 14.0]), np.array([0.9, 0.8, 0.7])
    assert nms_iou(s, e, sc, 0.5).tolist() == [0, 2]  # IoU(0, 1) = 8/12
    assert nms_iou(s, e, sc, 0.7).tolist() == [0, 1, 2]
    assert nms_iou(np.zeros(0), np.zeros(0), np.zeros(0), 0.5).tolist() == []


def test_soft_nms_hand() -> None:
    s, e = np.array([0.0, 5.0, 20.0, 0.0]), np.array([10.0, 15.0, 30.0, 10.0])
    sc = np.array([0.9, 0.8, 0.7, -0.1])
    idx, new = soft_nms(s, e, sc, sigma=0.5)
    # B: IoU 1/3 with A -> 0.8 exp(-2/9) = 0.6406 < C 0.7; D: IoU 1 with A -> -0.1 (2 - e^-2),
    # then IoU(B, D) = 5/15 decays D again
    d = -0.1 * (2 - math.exp(-2))
    d -= (1 - math.exp(-2 / 9)) * abs(d)
    assert idx.tolist() == [0, 2, 1, 3]
    np.testing.assert_allclose(new, [0.9, 0.7, 0.8 * math.exp(-2 / 9), d])
    idx, _ = soft_nms(s, e, sc, sigma=0.5, min_score=0.65)
    assert idx.tolist() == [0, 2]


def test_localize_iou_and_soft_options() -> None:
    # clean geometry, theta 0.05: [0, 6) (inner 2.2/6, outer [6, 8) = 0.05) and [7, 10) (inner 0.1,
    # outer [6] = 0); theta 0.2: [2, 6) (0.45)
    cfg = LocalizationConfig(
        cas_thresholds=(0.05, 0.2), compat_end_plus_one=False, nms="iou", nms_threshold=0.5
    )
    d = localize_video(X10, np.array([1.0]), cfg)
    # IoU([2, 6), [0, 6)) = 4/6 > 0.5 -> [0, 6) dropped
    assert (d.start.tolist(), d.end.tolist()) == ([2.0, 7.0], [6.0, 10.0])
    np.testing.assert_allclose(d.score, [0.45, 0.1])
    cfg = LocalizationConfig(cas_thresholds=(0.05, 0.2), compat_end_plus_one=False, nms="soft")
    d = localize_video(X10, np.array([1.0]), cfg)
    assert (d.start.tolist(), d.end.tolist()) == ([2.0, 0.0, 7.0], [6.0, 6.0, 10.0])
    np.testing.assert_allclose(d.score, [0.45, (2.2 / 6 - 0.05) * math.exp(-((4 / 6) ** 2) / 0.5), 0.1])


def test_max_detections_and_localize() -> None:
    # class 0 (see above): 0.45, 0.3167, 0.1; class 1 = [.2 .2 .2 0 1 1 1 1 .2 .2]: [4, 8) 0.9,
    # [4, 10) 4.4/6 - 0.1, [0, 3) 0.2 (IoU 4/6 < 0.9: nothing suppressed)
    cas = np.stack([X10[:, 0], X10[::-1, 0] * 2], axis=1)
    cfg = LocalizationConfig(
        cas_thresholds=(0.05, 0.2), compat_end_plus_one=False, nms="iou", nms_threshold=0.9
    )
    full = localize_video(cas, np.array([1.0, 1.0]), cfg)
    assert full.label.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(full.score[3:], [0.9, 4.4 / 6 - 0.1, 0.2])
    capped = localize_video(
        cas, np.array([1.0, 1.0]), LocalizationConfig(**{**cfg.__dict__, "max_detections": 2})
    )
    top2 = np.sort(full.score)[-2:]
    np.testing.assert_allclose(np.sort(capped.score), top2)
    assert capped.label.tolist() == [1, 1]
    # many videos, padded input with lengths, custom video indices
    padded = np.zeros((2, 12, 2))
    padded[0, :10] = cas
    padded[1, :10] = cas
    det = localize(padded, np.ones((2, 2)), cfg, lengths=[10, 10], videos=[7, 3])
    assert det.video.tolist() == [7] * 6 + [3] * 6
    np.testing.assert_array_equal(det.start[:6], full.start)
    np.testing.assert_array_equal(det.score[6:], full.score)


def test_detections_to_seconds_and_concatenate() -> None:
    det = Detections([0, 1], [0.0, 10.0], [3.0, 13.0], [2, 0], [0.5, -0.1])
    sec = det.to_seconds(0.64, durations=np.array([1.5, 100.0]))
    assert sec.units == "seconds"
    np.testing.assert_allclose(sec.start, [0.0, 6.4])
    np.testing.assert_allclose(sec.end, [1.5, 13 * 0.64])  # clipped to the duration
    with pytest.raises(ValueError, match="already in seconds"):
        sec.to_seconds(0.64)
    both = Detections.concatenate([det, det])
    assert len(both) == 4 and both.video.tolist() == [0, 1, 0, 1]
    assert len(Detections.concatenate([])) == 0
    with pytest.raises(ValueError, match="mixed units"):
        Detections.concatenate([det, sec])
    with pytest.raises(ValueError):
        LocalizationConfig(nms="nope")
