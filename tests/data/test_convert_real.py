"""Converters on the REAL annotation files kept in data/reference, with generated features.

Features are random with a small dim and T = floor(duration * 25 / 16) snippets (at least 1);
everything generated goes to pytest's tmp dirs. Expected numbers were counted on the annotation
files themselves (data/reference/PROVENANCE.md says where each file comes from).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from issf.data.h5 import FeatureFile
from issf.data.prepare import PrepareError, WriterOptions, convert_per_video, convert_wtalc
from tests import reference

THUMOS = reference.THUMOS_WTALC  # W-TALC layout, stored as is


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> SimpleNamespace:
    """Plain (decompressed) copies of the gzipped reference annotations."""
    tmp = tmp_path_factory.mktemp("reference")
    return SimpleNamespace(
        basnet=reference.unpack("thumos14/basnet", tmp / "thumos14"),  # BaS-Net/UM gt.json + split lists
        acmnet_thumos=reference.unpack("thumos14/acmnet/gt.json.gz", tmp / "thumos14" / "acmnet"),
        anet=reference.unpack("activitynet13/wtalc", tmp / "activitynet13"),  # W-TALC layout (yhZhai)
        bsn=reference.unpack("activitynet13/bsn/anet_anno_action.json.gz", tmp / "activitynet13" / "bsn"),
        acmnet_anet=reference.unpack("activitynet13/acmnet", tmp / "activitynet13"),  # split lists
    )


# ---- facts counted from the files -----------------------------------------------------------------
THUMOS_CLASSES = [
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving", "CricketBowling",
    "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow", "HighJump", "JavelinThrow",
    "LongJump", "PoleVault", "Shotput", "SoccerPenalty", "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
]
# class: (instances val, instances test)
THUMOS_INSTANCES = {
    "BaseballPitch": (30, 41), "BasketballDunk": (303, 488), "Billiards": (81, 106),
    "CleanAndJerk": (42, 98), "CliffDiving": (143, 217), "CricketBowling": (178, 138),
    "CricketShot": (181, 170), "Diving": (499, 388), "FrisbeeCatch": (103, 48), "GolfSwing": (31, 36),
    "HammerThrow": (199, 242), "HighJump": (271, 135), "JavelinThrow": (192, 169), "LongJump": (163, 142),
    "PoleVault": (120, 399), "Shotput": (70, 144), "SoccerPenalty": (66, 48), "TennisSwing": (69, 141),
    "ThrowDiscus": (120, 88), "VolleyballSpiking": (146, 120),
}
LABELS_DISAGREE = {f"video_validation_{n:07d}" for n in (171, 173, 178, 183, 316, 665, 786, 932)} | {
    f"video_test_{n:07d}" for n in (270, 367, 392, 448, 505, 549, 569, 622, 786, 798, 846, 847, 1164,
                                    1194, 1223, 1257, 1313, 1358, 1468, 1496)}
# W-TALC segments ending after the W-TALC duration: video -> number of segments
AFTER_END = {"video_validation_0000364": 2, "video_validation_0000856": 2, "video_test_0000270": 22,
             "video_test_0000814": 3, "video_test_0001081": 1}
# ACM-Net gt.json durations: wrong (frames/30) for the 13 videos that are not 30 fps; off by > 1 s in 16
ACM_DURATION_OFF = {f"video_validation_{n:07d}" for n in (311, 314, 369, 411, 413, 419, 420, 484, 666)} | {
    f"video_test_{n:07d}" for n in (793, 950, 1058, 1195, 1207, 1255, 1459)}
ACM_NOT_30FPS = ACM_DURATION_OFF - {"video_validation_0000314", "video_validation_0000369", "video_test_0000793"}


def _lengths(durations: np.ndarray) -> np.ndarray:
    return np.maximum(1, np.floor(np.asarray(durations, dtype=np.float64) * 25 / 16)).astype(np.int64)


def _wtalc_features(path: Path, durations: np.ndarray, dim: int, dtype=np.float32, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    arr = np.empty(len(durations), dtype=object)
    for i, t in enumerate(_lengths(durations)):
        arr[i] = rng.standard_normal((t, dim)).astype(dtype)
    np.save(path, arr, allow_pickle=True)
    return list(arr)


def _per_video_features(folder: Path, durations: dict[str, float], dim: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for vid, t in zip(durations, _lengths(list(durations.values()))):
        np.save(folder / f"{vid}.npy", rng.standard_normal((t, dim)).astype(np.float32))


def _thumos_durations() -> dict[str, float]:
    names = [v.decode() for v in np.load(THUMOS / "videoname.npy")]
    return dict(zip(names, np.load(THUMOS / "duration.npy").reshape(-1).tolist()))


def _count(pattern: str, text: str) -> int:
    return int(re.search(pattern, text).group(1))


# ---- THUMOS'14, W-TALC ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thumos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("thumos_wtalc")
    durations = np.load(THUMOS / "duration.npy").reshape(-1)
    feats = _wtalc_features(tmp / "Thumos14reduced-I3D-JOINTFeatures.npy", durations, dim=8)
    report = convert_wtalc(THUMOS, tmp / "thumos14.h5", feature_file=tmp / "Thumos14reduced-I3D-JOINTFeatures.npy")
    return tmp, feats, report


def test_thumos_wtalc_counts(thumos):
    tmp, feats, report = thumos
    assert report.videos == {"train": 200, "test": 212}
    assert report.segments == {"train": 3007, "test": 3358}
    assert report.classes == THUMOS_CLASSES and report.feature_dim == 8
    ff = FeatureFile(report.path)
    assert ff.class_names == THUMOS_CLASSES
    assert "video_test_0001292" not in ff.video_ids  # only Ambiguous segments: not in W-TALC
    durations = np.load(THUMOS / "duration.npy").reshape(-1)
    np.testing.assert_array_equal(ff.lengths, _lengths(durations))
    for i in (0, 200, 411):
        np.testing.assert_array_equal(ff.features(i), feats[i])
    for subset, col in (("train", 0), ("test", 1)):
        gt = ff.ground_truth(subset)
        counts = Counter(ff.class_names[c] for c in gt.segment_label)
        assert {c: counts[c] for c in THUMOS_CLASSES} == {c: n[col] for c, n in THUMOS_INSTANCES.items()}
        assert (gt.segments[:, 1] <= gt.durations[gt.segment_video]).all()
        assert (gt.segments[:, 0] >= 0).all()
    # identical (start, end) pairs labelled CliffDiving and Diving: 143 val, 217 test
    for subset, expected in (("train", 143), ("test", 217)):
        gt = ff.ground_truth(subset)
        by_seg: dict[tuple, set] = {}
        for v, (s, e), c in zip(gt.segment_video, gt.segments, gt.segment_label):
            by_seg.setdefault((v, s, e), set()).add(ff.class_names[c])
        assert sum({"CliffDiving", "Diving"} <= names for names in by_seg.values()) == expected
    # W-TALC's video-level labels are kept: 21 of the 200 training videos have two labels (docs/method.md, Data)
    assert int((ff.ground_truth("train").labels.sum(1) == 2).sum()) == 21


def test_thumos_wtalc_defects(thumos):
    _, _, report = thumos
    assert set(report.warning_counts()) == {"labels_disagree", "segment_outside", "ambiguous_unknown_video"}
    disagree = report.warned_videos("labels_disagree")
    assert disagree == LABELS_DISAGREE and len(disagree) == 28
    assert sum(v.startswith("video_validation") for v in disagree) == 8
    outside = {w.video: w for w in report.warnings if w.kind == "segment_outside"}
    assert set(outside) == set(AFTER_END)
    for vid, n in AFTER_END.items():  # all of them start after the end: kept as zero-length
        assert _count(r"^(\d+) of \d+ intervals outside", outside[vid].message) == n
        assert _count(r"; (\d+) start at or after the end", outside[vid].message) == n
    assert report.segments_clipped == report.segments_past_end == 4 + 26  # 4 val, 26 test segments
    # Ambiguous_test.txt: 99 rows in 37 videos; 36 videos are W-TALC test videos (96 rows kept)
    assert report.ambiguous == 96
    (amb,) = [w for w in report.warnings if w.kind == "ambiguous_unknown_video"]
    assert amb.video == "video_test_0001292" and "3 rows" in amb.message
    ff = FeatureFile(report.path)
    gt = ff.ground_truth("test")
    assert len(gt.ambiguous) == 96 and len(set(gt.ambiguous_video.tolist())) == 36
    assert len(ff.ground_truth("train").ambiguous) == 0
    zero = ff.segments[:, 1] - ff.segments[:, 0] == 0
    assert {ff.video_ids[v] for v in ff.segment_video[zero]} == set(AFTER_END)
    assert "30 (30 entirely after the end)" in str(report)


def test_thumos_wtalc_options(thumos, tmp_path):
    tmp, _, _ = thumos
    feature_file = tmp / "Thumos14reduced-I3D-JOINTFeatures.npy"
    report = convert_wtalc(THUMOS, tmp_path / "seg.h5", feature_file=feature_file, labels_from="segments",
                           writer=WriterOptions(past_end="drop", dtype="float16"))
    assert report.segments == {"train": 3007 - 4, "test": 3358 - 26}
    assert len(report.warned_videos("labels_disagree")) == 28
    ff = FeatureFile(tmp_path / "seg.h5")
    # labels from segments: videos with more than one class: 27 val, 34 test
    # (segments dropped past the end do not change labels: 0000270 keeps HammerThrow)
    for subset, multi in (("train", 27), ("test", 34)):
        assert int((ff.ground_truth(subset).labels.sum(1) > 1).sum()) == multi
    assert ff.labels[ff.video_ids.index("video_test_0000270")].sum() == 1
    with pytest.raises(FileExistsError):
        convert_wtalc(THUMOS, tmp_path / "seg.h5", feature_file=feature_file)


# ---- THUMOS'14, per-video features with BaS-Net/UM gt.json and ACM-Net gt.json --------------------


@pytest.fixture(scope="module")
def thumos_per_video(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("thumos_pv")
    durations = _thumos_durations()
    _per_video_features(tmp / "features", durations, dim=16)
    return tmp, durations


def test_basnet_gt_json(thumos_per_video, plain, tmp_path):
    tmp, durations = thumos_per_video
    basnet = plain.basnet
    splits = {"train": basnet / "split_train.txt", "test": basnet / "split_test.txt"}
    report = convert_per_video(tmp / "features", basnet / "gt.json", tmp_path / "basnet.h5",
                               annotation_format="basnet", splits=splits, durations=durations)
    assert report.videos == {"train": 200, "test": 210}
    assert report.segments == {"train": 3007, "test": 3311}
    assert report.classes == THUMOS_CLASSES and report.feature_dim == 16
    ff = FeatureFile(tmp_path / "basnet.h5")
    assert not {"video_test_0000270", "video_test_0001496"} & set(ff.video_ids)
    # the 4 videos with segments after the end that every codebase keeps
    assert report.warned_videos("segment_outside") == set(AFTER_END) - {"video_test_0000270"}
    assert report.segments_clipped == 8
    assert report.warned_videos("length_mismatch") == set()
    np.testing.assert_allclose(ff.durations, [durations[v] for v in ff.video_ids])

    # subsets from gt.json itself; durations estimated from the features (T * 16/25 s)
    report = convert_per_video(tmp / "features", basnet / "gt.json", tmp_path / "basnet2.h5",
                               annotation_format="basnet")
    assert report.videos == {"test": 210, "train": 200} and report.segments["test"] == 3311
    assert any("410 videos have no duration" in n for n in report.notes)
    ff2 = FeatureFile(tmp_path / "basnet2.h5")
    np.testing.assert_allclose(ff2.durations, ff2.lengths * 16 / 25)


def test_acmnet_gt_json_activitynet_layout(thumos_per_video, plain, tmp_path):
    """ACM-Net's gt.json (ActivityNet layout, with durations) for THUMOS'14: 200 + 212 videos."""
    tmp, _ = thumos_per_video
    report = convert_per_video(tmp / "features", plain.acmnet_thumos, tmp_path / "acm.h5",
                               subset_map={"validation": "train", "test": "test"})
    assert report.videos == {"test": 212, "train": 200}
    assert report.segments == {"test": 3358, "train": 3007}
    # features follow the W-TALC durations; ACM-Net's own are wrong for the 13 non-30-fps videos
    mismatch = report.warned_videos("length_mismatch")
    assert ACM_NOT_30FPS <= mismatch <= ACM_DURATION_OFF
    # with ACM-Net's durations, 30 val + 62 test segments end after the video
    assert report.segments_clipped == 30 + 62


# ---- ActivityNet 1.3 ---------------------------------------------------------------------------------


def test_activitynet_wtalc_yhzhai(plain, tmp_path):
    anet = plain.anet
    durations = np.load(anet / "duration.npy").reshape(-1)
    _wtalc_features(tmp_path / "f.npy", durations, dim=4, dtype=np.float16)
    report = convert_wtalc(anet, tmp_path / "anet.h5", feature_file=tmp_path / "f.npy",
                           writer=WriterOptions(dtype="float16"))
    assert report.videos == {"train": 9337, "test": 4575}  # training -> train, validation -> test
    assert report.segments == {"train": 14377, "test": 7057}
    classes = [str(c) for c in np.load(anet / "classlist.npy")]
    assert report.num_classes == 200 and report.classes == classes
    assert report.ambiguous == 0
    # facts computed from the files: labels agree everywhere; segments ending after the duration are clipped
    segments = np.load(anet / "segments.npy", allow_pickle=True)
    subset = np.load(anet / "subset.npy")
    after = Counter(str(s) for s, segs, d in zip(subset, segments, durations) for a in segs if a[1] > d)
    assert report.segments_clipped == sum(after.values()) and report.segments_past_end == 0
    assert after["training"] == 141  # 141 training segments end after the video
    assert report.warned_videos("labels_disagree") == set()
    assert set(report.warning_counts()) == {"segment_outside", "empty_segment"}
    ff = FeatureFile(tmp_path / "anet.h5")
    empty = ff.segments[:, 1] == ff.segments[:, 0]
    # segments with end <= start: 8 training, 3 validation (all have end == start)
    assert Counter(ff.subsets[ff.segment_video[empty]].tolist()) == {"train": 8, "test": 3}
    assert len(report.warned_videos("empty_segment")) == 11
    np.testing.assert_array_equal(ff.lengths, _lengths(durations))


def test_activitynet_bsn_json_with_acmnet_splits(plain, tmp_path):
    """BSN's bare {v_id: {duration_second, annotations}} file with the ACM-Net WTAL split lists."""
    bsn_path, acmnet_anet, anet = plain.bsn, plain.acmnet_anet, plain.anet
    bsn = json.loads(bsn_path.read_text())
    # the real split_train.txt lists 13 videos that BSN could not download: a clear error, nothing written
    with pytest.raises(PrepareError) as info:
        convert_per_video(tmp_path, bsn_path, tmp_path / "out" / "x.h5",
                          splits={"train": acmnet_anet / "split_train.txt", "test": acmnet_anet / "split_test.txt"})
    missing = info.value.video
    assert missing not in bsn and info.value.field == "split list" and "split_train.txt" in str(info.value)
    assert not (tmp_path / "out").exists()
    # the first 40 listed videos of each split that BSN has
    splits, durations = {}, {}
    for subset, name in (("train", "split_train.txt"), ("test", "split_test.txt")):
        ids = [v for v in (acmnet_anet / name).read_text().split() if v in bsn][:40]
        (tmp_path / name).write_text("\n".join(ids) + "\n")
        splits[subset] = tmp_path / name
        durations.update({v: bsn[v]["duration_second"] for v in ids})
    _per_video_features(tmp_path / "features", durations, dim=4)
    report = convert_per_video(tmp_path / "features", bsn_path, tmp_path / "bsn.h5", splits=splits)
    assert report.videos == {"train": 40, "test": 40}
    assert report.segments["train"] == sum(len(bsn[v]["annotations"]) for v in splits["train"].read_text().split())
    # class list: the sorted labels of the whole file = the 200 ActivityNet classes of the W-TALC copy
    assert set(report.classes) == {str(c) for c in np.load(anet / "classlist.npy")}
    ff = FeatureFile(tmp_path / "bsn.h5")
    np.testing.assert_allclose(ff.durations, [durations[v] for v in ff.video_ids])
