"""Converters pair each video's features with its own annotations when subsets are skipped or
interleaved, and when split lists reorder the videos: every video's features name the video."""

from __future__ import annotations

import numpy as np

from issf.data.h5 import FeatureFile
from issf.data.prepare import convert_per_video, convert_wtalc
from tests.data.test_convert import SNIP, D, write_per_video, write_wtalc

SUBSETS = ["extra", "validation", "test", "extra", "test", "validation", "test", "test"]
CLASS_OF = ["Alpha", "Beta", "Gamma"]


def table_and_features() -> tuple[list[dict], list[np.ndarray]]:
    """Videos whose features are filled with their own number, each with its own length, class and
    annotations; the skipped subset 'extra' comes first and in the middle."""
    table, feats = [], []
    for i, subset in enumerate(SUBSETS):
        t = 20 + 3 * i
        label = CLASS_OF[i % 3]
        table.append(dict(id=f"vid_{i}", subset=subset, duration=t * SNIP, segments=[[1.0 + i / 10, 5.0 + i / 10]],
                          labels=[label], labels_all=[label]))
        feats.append(np.full((t, D), float(i), np.float32))
    return table, feats


def check_pairing(ff: FeatureFile, table: list[dict], feats: list[np.ndarray]) -> None:
    by_id = {v["id"]: (v, x) for v, x in zip(table, feats)}
    for index, vid in enumerate(ff.video_ids):
        v, x = by_id[vid]
        np.testing.assert_array_equal(ff.features(index), x, err_msg=vid)
        assert ff.durations[index] == np.float64(v["duration"]), vid
        assert ff.labels[index].tolist() == [int(c in v["labels_all"]) for c in CLASS_OF], vid
    gt = ff.ground_truth(None)
    for s, (video, label) in enumerate(zip(gt.segment_video, gt.segment_label)):
        v = by_id[gt.video_ids[video]][0]
        assert gt.segments[s].tolist() == v["segments"][0] and CLASS_OF[label] == v["labels"][0]


def test_wtalc_features_stay_with_their_video_when_subsets_are_skipped(tmp_path):
    table, feats = table_and_features()
    ambiguous = "vid_4 1.0 2.0\nvid_7 3.0 4.0\nvid_3 0.5 1.5\n"  # vid_3 is skipped
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, feats, ambiguous=ambiguous)
    report = convert_wtalc(folder, tmp_path / "toy.h5", subset_map={"validation": "train", "test": "test"})
    assert report.skipped == {"extra": 2} and report.videos == {"train": 2, "test": 4}
    ff = FeatureFile(tmp_path / "toy.h5")
    assert ff.video_ids == [v["id"] for v in table if v["subset"] != "extra"]
    check_pairing(ff, table, feats)
    test = ff.ground_truth("test")
    assert [test.video_ids[v] for v in test.ambiguous_video] == ["vid_4", "vid_7"]
    np.testing.assert_allclose(test.ambiguous, [[1.0, 2.0], [3.0, 4.0]])


def test_wtalc_every_subset_mapped_in_file_order(tmp_path):
    table, feats = table_and_features()
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, feats, ambiguous=None)
    convert_wtalc(folder, tmp_path / "all.h5", subset_map={"validation": "train", "test": "test", "extra": "val"})
    ff = FeatureFile(tmp_path / "all.h5")
    assert ff.video_ids == [v["id"] for v in table]
    check_pairing(ff, table, feats)


def test_per_video_features_stay_with_their_video_when_reordered_or_skipped(tmp_path):
    table, feats = table_and_features()
    fdir, gt = write_per_video(tmp_path, table, feats)
    convert_per_video(fdir, gt, tmp_path / "mapped.h5", subset_map={"train": "train", "test": "test"})
    ff = FeatureFile(tmp_path / "mapped.h5")
    assert set(ff.video_ids) == {v["id"] for v in table if v["subset"] != "extra"}
    check_pairing(ff, table, feats)

    (tmp_path / "tr.txt").write_text("vid_5\nvid_1\n")
    (tmp_path / "te.txt").write_text("vid_7\nvid_2\nvid_6\n")
    convert_per_video(fdir, gt, tmp_path / "split.h5", splits={"train": tmp_path / "tr.txt",
                                                               "test": tmp_path / "te.txt"})
    ff = FeatureFile(tmp_path / "split.h5")
    assert ff.video_ids == ["vid_5", "vid_1", "vid_7", "vid_2", "vid_6"]
    check_pairing(ff, table, feats)


def test_split_ground_truth_keeps_ambiguous_intervals_with_their_video(tmp_path):
    """The test subset's ground truth re-indexes the ambiguous intervals with the videos when the
    subsets interleave (the filter must act on the video the interval belongs to)."""
    table, feats = table_and_features()
    ambiguous = "vid_6 2.0 3.0\nvid_2 1.0 2.0\nvid_1 0.0 1.0\n"  # vid_1 is a training video
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, feats, ambiguous=ambiguous)
    convert_wtalc(folder, tmp_path / "toy.h5", subset_map={"validation": "train", "test": "test", "extra": "train"})
    ff = FeatureFile(tmp_path / "toy.h5")
    for subset, expected in (("test", {"vid_2": [1.0, 2.0], "vid_6": [2.0, 3.0]}), ("train", {"vid_1": [0.0, 1.0]})):
        gt = ff.ground_truth(subset)
        got = {gt.video_ids[v]: b.tolist() for v, b in zip(gt.ambiguous_video, gt.ambiguous)}
        assert got == expected, subset
