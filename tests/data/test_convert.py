"""Converters on small generated inputs: every validation error, warnings, atomic writes, checksums."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from issf.data.h5 import FeatureFile
from issf.data.prepare import (
    PrepareError,
    PrepareFileNotFoundError,
    WriterOptions,
    convert_per_video,
    convert_wtalc,
    prepare_from_config,
)

CLASSES = ["Alpha", "Beta", "Gamma"]
D = 6
SNIP = 16 / 25


def _video_table() -> list[dict]:
    """Four videos: two 'validation' (-> train), two 'test'; lengths consistent with durations."""
    return [
        dict(id="vid_a", subset="validation", duration=32.0, segments=[[1.0, 4.0], [10.0, 12.5]],
             labels=["Alpha", "Alpha"], labels_all=["Alpha"]),
        dict(id="vid_b", subset="validation", duration=20.0, segments=[[0.5, 3.0], [5.0, 9.0]],
             labels=["Beta", "Gamma"], labels_all=["Beta", "Gamma"]),
        dict(id="vid_c", subset="test", duration=16.0, segments=[[2.0, 6.0]], labels=["Gamma"],
             labels_all=["Gamma"]),
        dict(id="vid_d", subset="test", duration=25.6, segments=[[3.0, 4.0], [8.0, 15.0]],
             labels=["Alpha", "Beta"], labels_all=["Alpha", "Beta"]),
    ]


def _features(table: list[dict], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((max(1, int(v["duration"] / SNIP)), D)).astype(np.float32) for v in table]


def _obj(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    return arr


def write_wtalc(folder: Path, table: list[dict] | None = None, feats: list[np.ndarray] | None = None,
                ambiguous: str = "vid_c  1.0 2.0\nvid_d  5.0 6.5\n", as_bytes: bool = True) -> Path:
    """A W-TALC folder named ``Toy-Annotations`` holding ``Toy-I3D-JOINTFeatures.npy``."""
    table = table if table is not None else _video_table()
    feats = feats if feats is not None else _features(table)
    folder.mkdir(parents=True, exist_ok=True)
    enc = (lambda s: s.encode()) if as_bytes else (lambda s: s)
    np.save(folder / "videoname.npy", np.asarray([enc(v["id"]) for v in table]))
    np.save(folder / "subset.npy", np.asarray([enc(v["subset"]) for v in table]))
    np.save(folder / "duration.npy", np.asarray([[v["duration"]] for v in table]))
    np.save(folder / "classlist.npy", np.asarray([enc(c) for c in CLASSES]))
    np.save(folder / "segments.npy", _obj([v["segments"] for v in table]), allow_pickle=True)
    np.save(folder / "labels.npy", _obj([v["labels"] for v in table]), allow_pickle=True)
    np.save(folder / "labels_all.npy", _obj([v["labels_all"] for v in table]), allow_pickle=True)
    np.save(folder / "Toy-I3D-JOINTFeatures.npy", _obj(feats), allow_pickle=True)
    if ambiguous is not None:
        (folder / "Ambiguous_test.txt").write_text(ambiguous)
    return folder


def write_per_video(root: Path, table: list[dict] | None = None, feats: list[np.ndarray] | None = None,
                    with_duration: bool = True, rgb_flow: bool = False) -> tuple[Path, Path]:
    """Per-video features under ``root/feats`` and an ActivityNet-layout ``root/gt.json``."""
    table = table if table is not None else _video_table()
    feats = feats if feats is not None else _features(table)
    fdir = root / "feats"
    for sub in (["rgb", "flow"] if rgb_flow else [""]):
        (fdir / sub).mkdir(parents=True, exist_ok=True)
    for v, x in zip(table, feats):
        if rgb_flow:
            np.save(fdir / "rgb" / f"{v['id']}.npy", x[:, : D // 2])
            np.save(fdir / "flow" / f"{v['id']}.npy", x[:, D // 2:])
        else:
            np.save(fdir / f"{v['id']}.npy", x)
    database = {}
    for v in table:
        rec = {"subset": {"validation": "train"}.get(v["subset"], v["subset"]),
               "annotations": [{"segment": s, "label": lab} for s, lab in zip(v["segments"], v["labels"])]}
        if with_duration:
            rec["duration"] = v["duration"]
        database[v["id"]] = rec
    gt = root / "gt.json"
    gt.write_text(json.dumps({"database": database}))
    return fdir, gt


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


# ----------------------------------------------------------------------------------------------
# round trips


def test_wtalc_round_trip(tmp_path):
    table = _video_table()
    feats = _features(table)
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, feats)
    out = tmp_path / "out" / "toy.h5"
    report = convert_wtalc(folder, out)
    assert report.path == out and out.exists()
    assert report.videos == {"train": 2, "test": 2}
    assert report.segments == {"train": 4, "test": 3}
    assert report.ambiguous == 2 and report.num_classes == 3 and report.feature_dim == D
    assert report.snippets == sum(len(x) for x in feats)
    assert report.warnings == []
    ff = FeatureFile(out)
    assert ff.video_ids == [v["id"] for v in table]
    assert ff.subsets.tolist() == ["train", "train", "test", "test"]
    assert ff.class_names == CLASSES and ff.feature_name == "Toy-I3D-JOINT"
    for i, x in enumerate(feats):
        np.testing.assert_array_equal(ff.features(i), x)
    np.testing.assert_allclose(ff.durations, [v["duration"] for v in table])
    np.testing.assert_array_equal(ff.labels[1], [0, 1, 1])
    gt = ff.ground_truth("test")
    assert gt.video_ids == ["vid_c", "vid_d"]
    np.testing.assert_allclose(gt.segments, [[2.0, 6.0], [3.0, 4.0], [8.0, 15.0]])
    np.testing.assert_array_equal(gt.segment_label, [2, 0, 1])
    np.testing.assert_allclose(gt.ambiguous, [[1.0, 2.0], [5.0, 6.5]])
    np.testing.assert_array_equal(gt.ambiguous_video, [0, 1])
    assert report.checksum == ff.checksum
    # provenance of every source file in the attributes
    files = ff.source["files"]
    assert ff.source["format"] == "wtalc"
    assert set(files) == {"videoname", "subset", "duration", "classlist", "labels_all", "segments", "labels",
                          "features", "ambiguous"}
    st = (folder / "Toy-I3D-JOINTFeatures.npy").stat()
    assert files["features"]["path"] == str((folder / "Toy-I3D-JOINTFeatures.npy").resolve())
    assert files["features"]["size"] == st.st_size and files["features"]["mtime"] == st.st_mtime
    assert len(files["segments"]["sha256"]) == 64
    with h5py.File(out, "r") as f:
        prepare = json.loads(f.attrs["prepare"])
    assert prepare["videos"] == {"train": 2, "test": 2}
    assert prepare["options"]["subset_map"] == {"validation": "train", "test": "test"}


def test_wtalc_str_variant_and_subset_map(tmp_path):
    """ActivityNet-style W-TALC files hold str, not bytes; unmapped subsets are skipped and counted."""
    table = _video_table()
    for v, s in zip(table, ["training", "training", "validation", "testing"]):
        v["subset"] = s
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, as_bytes=False, ambiguous=None)
    report = convert_wtalc(folder, tmp_path / "a.h5")  # inferred: training->train, validation->test
    assert report.videos == {"train": 2, "test": 1} and report.skipped == {"testing": 1}
    report = convert_wtalc(folder, tmp_path / "b.h5", subset_map={"training": "val", "testing": "test"})
    assert report.videos == {"val": 2, "test": 1} and report.skipped == {"validation": 1}
    assert FeatureFile(tmp_path / "b.h5").video_ids == ["vid_a", "vid_b", "vid_d"]


def test_per_video_round_trip_rgb_flow(tmp_path):
    table = _video_table()
    feats = _features(table)
    fdir, gt = write_per_video(tmp_path, table, feats, rgb_flow=True)
    report = convert_per_video(fdir, gt, tmp_path / "pv.h5", rgb_flow=True, subset_map={"train": "train",
                                                                                         "test": "test"})
    assert report.videos == {"train": 2, "test": 2} and report.feature_dim == D
    ff = FeatureFile(tmp_path / "pv.h5")
    for i, x in enumerate(feats):
        np.testing.assert_array_equal(ff.features(i), x)  # rgb first, then flow
    assert ff.class_names == CLASSES  # sorted labels of the annotation file
    np.testing.assert_array_equal(ff.labels, [[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]])
    assert ff.source["files"]["features"]["files"] == 8
    assert report.warnings == []


def test_per_video_splits_order_and_durations(tmp_path):
    fdir, gt = write_per_video(tmp_path, with_duration=False)
    (tmp_path / "tr.txt").write_text("vid_b\nvid_a\n")
    (tmp_path / "te.txt").write_text("vid_d\n\n")
    report = convert_per_video(fdir, gt, tmp_path / "s.h5", annotation_format="basnet",
                               splits={"train": tmp_path / "tr.txt", "test": tmp_path / "te.txt"})
    ff = FeatureFile(tmp_path / "s.h5")
    assert ff.video_ids == ["vid_b", "vid_a", "vid_d"]
    assert ff.subsets.tolist() == ["train", "train", "test"]
    # no durations in a BaS-Net gt.json: T * snippet_seconds, and a note saying so
    np.testing.assert_allclose(ff.durations, ff.lengths * SNIP)
    assert any("T * 0.64" in n for n in report.notes)
    report = convert_per_video(fdir, gt, tmp_path / "s2.h5", annotation_format="basnet",
                               splits={"train": tmp_path / "tr.txt"}, durations={"vid_b": 20.0})
    ff = FeatureFile(tmp_path / "s2.h5")
    np.testing.assert_allclose(ff.durations, [20.0, ff.lengths[1] * SNIP])


def test_float16_round_trip(tmp_path):
    table = _video_table()
    feats = _features(table)
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, feats)
    report = convert_wtalc(folder, tmp_path / "h.h5", writer=WriterOptions(dtype="float16"))
    assert report.dtype == "float16"
    with h5py.File(tmp_path / "h.h5", "r") as f:
        assert f["features"].dtype == np.float16
    ff = FeatureFile(tmp_path / "h.h5")
    for i, x in enumerate(feats):
        got = ff.features(i)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(got, x, rtol=1e-3, atol=1e-3)


def test_checksum_stable_and_sensitive(tmp_path):
    table = _video_table()
    feats = _features(table)
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, feats)
    c1 = convert_wtalc(folder, tmp_path / "1.h5").checksum
    c2 = convert_wtalc(folder, tmp_path / "2.h5").checksum
    assert c1 == c2 and c1.startswith("sha256:")
    feats[3] = feats[3].copy()
    feats[3][5, 2] += 1e-3
    write_wtalc(folder, table, feats)
    c3 = convert_wtalc(folder, tmp_path / "3.h5").checksum
    table[0]["segments"][1] = [10.0, 12.6]
    write_wtalc(folder, table, feats)
    c4 = convert_wtalc(folder, tmp_path / "4.h5").checksum
    assert len({c1, c3, c4}) == 3
    assert convert_wtalc(folder, tmp_path / "5.h5", writer=WriterOptions(dtype="float16")).checksum != c4


# ----------------------------------------------------------------------------------------------
# overwrite and atomicity


def test_overwrite(tmp_path):
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    out = tmp_path / "out" / "o.h5"
    first = convert_wtalc(folder, out)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_wtalc(folder, out)
    assert out.read_bytes() == before
    # a failing conversion with overwrite=True leaves the old file as it was
    table = _video_table()
    feats = _features(table)
    feats[3][0, 0] = np.nan
    write_wtalc(folder, table, feats)
    with pytest.raises(PrepareError):
        convert_wtalc(folder, out, writer=WriterOptions(overwrite=True))
    assert out.read_bytes() == before and _listing(out.parent) == {"o.h5"}
    feats[3][0, 0] = 7.0
    write_wtalc(folder, table, feats)
    second = convert_wtalc(folder, out, writer=WriterOptions(overwrite=True))
    assert second.checksum != first.checksum and FeatureFile(out).checksum == second.checksum
    assert _listing(out.parent) == {"o.h5"}


# ----------------------------------------------------------------------------------------------
# W-TALC errors: message names file, video and field; nothing is left behind


def _nan_last(table, feats, folder):
    feats[-1][2, 1] = np.nan


def _inf_first(table, feats, folder):
    feats[0][0, 0] = np.inf


def _dim(table, feats, folder):
    feats[2] = np.zeros((10, D + 1), np.float32)


def _zero_len(table, feats, folder):
    feats[1] = np.zeros((0, D), np.float32)


def _not_2d(table, feats, folder):
    feats[1] = np.zeros(10, np.float32)


def _bad_seg_label(table, feats, folder):
    table[2]["labels"] = ["Delta"]


def _bad_video_label(table, feats, folder):
    table[3]["labels_all"] = ["Alpha", "Omega"]


def _dup(table, feats, folder):
    table[3]["id"] = "vid_b"


def _seg_reversed(table, feats, folder):
    table[1]["segments"][1] = [9.0, 5.0]


def _seg_count(table, feats, folder):
    table[0]["labels"] = ["Alpha"]


def _bad_duration(table, feats, folder):
    table[2]["duration"] = 0.0


def _f16_overflow(table, feats, folder):
    feats[2][3, 3] = 1e6


WTALC_ERRORS = [
    # (mutation, kwargs, error type, substrings of the message: file, video, field, problem)
    (_nan_last, {}, PrepareError, ["Toy-I3D-JOINTFeatures.npy", "video vid_d", "features[3]", "1 NaN"]),
    (_inf_first, {}, PrepareError, ["Toy-I3D-JOINTFeatures.npy", "video vid_a", "features[0]", "1 inf"]),
    (_dim, {}, PrepareError, ["Toy-I3D-JOINTFeatures.npy", "video vid_c", "features", "dim 7 differs from 6"]),
    (_dim, {"feature_dim": 7}, PrepareError, ["video vid_a", "dim 6 differs from 7 (feature_dim=7)"]),
    (_zero_len, {}, PrepareError, ["Toy-I3D-JOINTFeatures.npy", "video vid_b", "features[1]", "zero-length"]),
    (_not_2d, {}, PrepareError, ["Toy-I3D-JOINTFeatures.npy", "video vid_b", "features[1]", "2-D"]),
    (_bad_seg_label, {}, PrepareError, ["labels.npy", "video vid_c", ": labels:", "'Delta' is not in the class"]),
    (_bad_video_label, {}, PrepareError, ["labels_all.npy", "video vid_d", "labels_all", "'Omega'"]),
    (_dup, {}, PrepareError, ["videoname.npy", "video vid_b", "videoname", "duplicate id"]),
    (_seg_reversed, {}, PrepareError, ["segments.npy", "video vid_b", "segments", "ends before it starts"]),
    (_seg_count, {}, PrepareError, ["labels.npy", "video vid_a", "labels", "1 segment labels for 2 segments"]),
    (_bad_duration, {}, PrepareError, ["duration.npy", "video vid_c", "duration", "positive"]),
    (_f16_overflow, {"dtype": "float16"}, PrepareError, ["features[2]", "video vid_c", "overflows float16"]),
]


@pytest.mark.parametrize("mutate,kwargs,exc,parts", WTALC_ERRORS, ids=[m[0].__name__ + str(m[1]) for m in WTALC_ERRORS])
def test_wtalc_errors(tmp_path, mutate, kwargs, exc, parts):
    table = _video_table()
    feats = _features(table)
    folder = tmp_path / "Toy-Annotations"
    mutate(table, feats, folder)
    write_wtalc(folder, table, feats)
    out_dir = tmp_path / "out"
    with pytest.raises(exc) as info:
        convert_wtalc(folder, out_dir / "x.h5", writer=WriterOptions(**kwargs))
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    assert _listing(out_dir) == set(), "no output and no temporary file may remain"


@pytest.mark.parametrize("missing,field", [("labels.npy", "labels"), ("videoname.npy", "videoname"),
                                           ("Toy-I3D-JOINTFeatures.npy", "features")])
def test_wtalc_missing_files(tmp_path, missing, field):
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    (folder / missing).unlink()
    with pytest.raises(PrepareFileNotFoundError) as info:
        convert_wtalc(folder, tmp_path / "out" / "x.h5")
    assert isinstance(info.value, FileNotFoundError)
    assert str(folder / missing) in str(info.value) and f": {field}: file not found" in str(info.value)
    assert _listing(tmp_path / "out") == set()


def test_wtalc_other_errors(tmp_path):
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    with pytest.raises(PrepareFileNotFoundError, match="nope.npy: features: file not found"):
        convert_wtalc(folder, tmp_path / "x.h5", feature_file=tmp_path / "nope.npy")
    np.save(folder / "duration.npy", np.asarray([[1.0]] * 3))
    with pytest.raises(PrepareError, match=r"duration.npy: duration: 3 entries, but videoname.npy has 4"):
        convert_wtalc(folder, tmp_path / "x.h5")
    folder = write_wtalc(tmp_path / "Toy-Annotations", ambiguous="vid_c 1.0 2.0\nvid_d 5.0\n")
    with pytest.raises(PrepareError, match=r"Ambiguous_test.txt: video vid_d: ambiguous: line 2"):
        convert_wtalc(folder, tmp_path / "x.h5")
    table = _video_table()
    table[0]["subset"] = "holdout"
    folder = write_wtalc(tmp_path / "Toy-Annotations", table)
    with pytest.raises(PrepareError, match=r"subset.npy: subset: cannot infer subset_map"):
        convert_wtalc(folder, tmp_path / "x.h5")
    (folder / "Toy-I3D-JOINTFeatures.npy").write_bytes(b"not an npy file")
    with pytest.raises(PrepareError, match=r"Toy-I3D-JOINTFeatures.npy: features: cannot read"):
        convert_wtalc(folder, tmp_path / "x.h5", subset_map={"test": "test"})
    assert not (tmp_path / "x.h5").exists()


# ----------------------------------------------------------------------------------------------
# per-video errors


def test_per_video_errors(tmp_path):
    table = _video_table()
    feats = _features(table)
    fdir, gt = write_per_video(tmp_path, table, feats)
    out_dir = tmp_path / "out"

    def fails(exc, parts, *args, **kwargs):
        with pytest.raises(exc) as info:
            convert_per_video(*args, out_path=out_dir / "x.h5", **kwargs)
        for part in parts:
            assert part in str(info.value), (part, str(info.value))
        assert _listing(out_dir) == set()

    np.save(fdir / "vid_c.npy", np.zeros((25, D + 2), np.float32))
    fails(PrepareError, [str(fdir / "vid_c.npy"), "video vid_c", "features", "dim 8 differs from 6"], fdir, gt)
    np.save(fdir / "vid_c.npy", np.full((25, D), np.nan, np.float32))
    fails(PrepareError, [str(fdir / "vid_c.npy"), "video vid_c", "features", "150 NaN"], fdir, gt)
    np.save(fdir / "vid_c.npy", np.zeros((0, D), np.float32))
    fails(PrepareError, [str(fdir / "vid_c.npy"), "video vid_c", "zero-length"], fdir, gt)
    (fdir / "vid_c.npy").unlink()
    fails(PrepareFileNotFoundError, [str(fdir / "vid_c.npy"), "video vid_c", "features", "file not found"], fdir, gt)
    fails(PrepareFileNotFoundError, [str(fdir / "rgb" / "vid_a.npy"), "video vid_a"], fdir, gt, rgb_flow=True)
    np.save(fdir / "vid_c.npy", feats[2])
    fails(PrepareFileNotFoundError, ["missing_dir", "feature folder not found"], tmp_path / "missing_dir", gt)
    fails(PrepareError, [str(gt), "video vid_b", "annotations[1].label", "'Gamma' is not in the class list"],
          fdir, gt, class_names=["Alpha", "Beta"])
    fails(PrepareError, ["class_names", "video Beta", "duplicate"], fdir, gt, class_names=["Alpha", "Beta", "Beta"])

    # JSON defects
    text = gt.read_text()
    gt.write_text(text.replace('"vid_d": {', '"vid_a": {'))
    fails(PrepareError, [str(gt), "video vid_a", "database", "twice"], fdir, gt)
    data = json.loads(text)
    del data["database"]["vid_b"]["duration"]
    gt.write_text(json.dumps(data))
    fails(PrepareError, [str(gt), "video vid_b", "duration", "set data.prepare.durations="], fdir, gt)
    data["database"]["vid_b"]["duration"] = 20.0
    data["database"]["vid_d"]["annotations"][0]["segment"] = ["3.0", "four"]
    gt.write_text(json.dumps(data))
    fails(PrepareError, [str(gt), "video vid_d", "annotations[].segment", "pairs of numbers"], fdir, gt)
    del data["database"]["vid_d"]["subset"]
    data["database"]["vid_d"]["annotations"][0]["segment"] = [3.0, 4.0]
    gt.write_text(json.dumps(data))
    fails(PrepareError, [str(gt), "video vid_d", "subset", "set data.prepare.splits="], fdir, gt)

    # split lists
    (tmp_path / "tr.txt").write_text("vid_a\nvid_b\nvid_a\n")
    fails(PrepareError, ["tr.txt", "video vid_a", "split list", "duplicate"], fdir, gt,
          splits={"train": tmp_path / "tr.txt"})
    (tmp_path / "tr.txt").write_text("vid_a\nvid_b\n")
    (tmp_path / "te.txt").write_text("vid_b\n")
    fails(PrepareError, ["te.txt", "video vid_b", "split list", "also listed in"], fdir, gt,
          splits={"train": tmp_path / "tr.txt", "test": tmp_path / "te.txt"})
    (tmp_path / "te.txt").write_text("vid_x\n")
    fails(PrepareError, ["te.txt", "video vid_x", "split list", "missing from"], fdir, gt,
          splits={"train": tmp_path / "tr.txt", "test": tmp_path / "te.txt"})
    fails(PrepareFileNotFoundError, ["none.txt", "split list", "file not found"], fdir, gt,
          splits={"train": tmp_path / "none.txt"})
    gt.write_text(text)
    fails(PrepareError, [str(gt), "no videos selected"], fdir, gt, subset_map={"other": "train"})


# ----------------------------------------------------------------------------------------------
# warnings: reported, not fatal


def test_segments_outside_clip_keep_or_drop(tmp_path):
    table = _video_table()
    table[2]["segments"] = [[-1.0, 3.0], [10.0, 18.0], [17.0, 19.0], [2.0, 2.0]]  # duration 16
    table[2]["labels"] = ["Gamma", "Gamma", "Alpha", "Gamma"]
    table[2]["labels_all"] = ["Alpha", "Gamma"]
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, ambiguous="vid_c 15.0 17.0\nvid_c 20 21\n")
    report = convert_wtalc(folder, tmp_path / "k.h5")
    assert report.segments_clipped == 3 and report.segments_past_end == 1
    assert report.warning_counts() == {"ambiguous_outside": 1, "empty_segment": 1, "segment_outside": 1}
    w = [w for w in report.warnings if w.kind == "segment_outside"][0]
    assert (w.video, w.field, w.file) == ("vid_c", "segments", str(folder / "segments.npy"))
    assert "3 of 4 intervals outside [0, 16.000]" in w.message and "1 start at or after the end" in w.message
    gt = FeatureFile(tmp_path / "k.h5").ground_truth("test")
    np.testing.assert_allclose(gt.segments[:4], [[0.0, 3.0], [10.0, 16.0], [16.0, 16.0], [2.0, 2.0]])
    np.testing.assert_array_equal(gt.segment_label[:4], [2, 2, 0, 2])
    np.testing.assert_allclose(gt.ambiguous, [[15.0, 16.0]])  # ambiguous rows past the end are dropped

    report = convert_wtalc(folder, tmp_path / "d.h5", writer=WriterOptions(past_end="drop"))
    assert report.segments == {"train": 4, "test": 5} and report.segments_past_end == 1
    gt = FeatureFile(tmp_path / "d.h5").ground_truth("test")
    np.testing.assert_allclose(gt.segments[:3], [[0.0, 3.0], [10.0, 16.0], [2.0, 2.0]])
    np.testing.assert_array_equal(gt.segment_label[:3], [2, 2, 2])
    assert gt.labels[0].tolist() == [1, 0, 1]  # video-level labels are not touched by dropping


def test_labels_disagree(tmp_path):
    table = _video_table()
    table[1]["labels_all"] = ["Beta"]  # segments say Beta and Gamma
    folder = write_wtalc(tmp_path / "Toy-Annotations", table)
    report = convert_wtalc(folder, tmp_path / "v.h5")
    assert report.warned_videos("labels_disagree") == {"vid_b"}
    w = report.warnings[0]
    assert w.field == "labels_all" and w.file == str(folder / "labels_all.npy")
    assert "labels_all=['Beta'] but segment labels=['Beta', 'Gamma']; kept labels_all" in w.message
    assert FeatureFile(tmp_path / "v.h5").labels[1].tolist() == [0, 1, 0]
    report = convert_wtalc(folder, tmp_path / "s.h5", labels_from="segments")
    assert "kept segment labels" in report.warnings[0].message
    assert FeatureFile(tmp_path / "s.h5").labels[1].tolist() == [0, 1, 1]


def test_length_mismatch_and_stream_length(tmp_path):
    table = _video_table()
    feats = _features(table)
    feats[0] = feats[0][:40]  # duration 32 s -> 50 snippets expected
    fdir, gt = write_per_video(tmp_path, table, feats, rgb_flow=True)
    np.save(fdir / "flow" / "vid_b.npy", np.load(fdir / "flow" / "vid_b.npy")[:-1])
    report = convert_per_video(fdir, gt, tmp_path / "l.h5", rgb_flow=True)
    assert report.warning_counts() == {"length_mismatch": 1, "stream_length": 1}
    lm = [w for w in report.warnings if w.kind == "length_mismatch"][0]
    assert lm.video == "vid_a" and "40 snippets" in lm.message and "50.0" in lm.message
    assert str(fdir / "rgb" / "vid_a.npy") in lm.file and str(fdir / "flow" / "vid_a.npy") in lm.file
    sl = [w for w in report.warnings if w.kind == "stream_length"][0]
    assert sl.video == "vid_b" and "[31, 30]" in sl.message
    ff = FeatureFile(tmp_path / "l.h5")
    assert ff.lengths.tolist()[:2] == [40, 30]
    with h5py.File(tmp_path / "l.h5", "r") as f:  # warnings found while streaming reach the file
        prepare = json.loads(f.attrs["prepare"])
    assert prepare["warnings"] == {"length_mismatch": 1, "stream_length": 1}
    assert prepare["warned_videos"]["length_mismatch"] == ["vid_a"]
    report = convert_per_video(fdir, gt, tmp_path / "n.h5", rgb_flow=True, writer=WriterOptions(length_tolerance=None))
    assert report.warning_counts() == {"stream_length": 1}


def test_ambiguous_for_unknown_video_and_report_text(tmp_path):
    folder = write_wtalc(tmp_path / "Toy-Annotations", ambiguous="vid_c 1 2\nvid_z 3 4\nvid_z 5 6\n")
    report = convert_wtalc(folder, tmp_path / "u.h5")
    assert report.ambiguous == 1
    w = report.warnings[0]
    assert (w.kind, w.video, w.field) == ("ambiguous_unknown_video", "vid_z", "ambiguous")
    assert "2 rows" in w.message
    text = str(report)
    assert "train: 2 videos / 4 segments" in text and "test: 2 videos / 3 segments" in text
    assert "1 warning(s) ambiguous_unknown_video" in text and "vid_z" in text
    assert report.checksum in text


def test_bad_options(tmp_path):
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    with pytest.raises(ValueError, match="dtype"):
        WriterOptions(dtype="float64")
    with pytest.raises(ValueError, match="labels_from"):
        convert_wtalc(folder, tmp_path / "x.h5", labels_from="both")
    with pytest.raises(ValueError, match="past_end"):
        WriterOptions(past_end="clip")
    assert not os.path.exists(tmp_path / "x.h5")


def test_prepare_from_config(tmp_path):
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    report = prepare_from_config({"format": "wtalc", "folder": str(folder), "dtype": "float16"}, tmp_path / "c.h5")
    assert report.videos == {"train": 2, "test": 2} and report.dtype == "float16"
    fdir, gt = write_per_video(tmp_path)
    report = prepare_from_config({"format": "per_video", "feature_dir": str(fdir), "annotation_file": str(gt),
                                  "subset_map": {"train": "train"}}, tmp_path / "p.h5")
    assert report.videos == {"train": 2} and report.skipped == {"test": 2}
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['labels_form'\].*accepted: \['folder'"):
        prepare_from_config({"format": "wtalc", "folder": str(folder), "labels_form": "video"}, tmp_path / "e.h5")
    with pytest.raises(ValueError, match="format must be one of"):
        prepare_from_config({"folder": str(folder)}, tmp_path / "e.h5")
    assert not (tmp_path / "e.h5").exists()
