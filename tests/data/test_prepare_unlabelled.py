"""``prepare`` without annotations (``data.prepare.annotations=none``): features only, for task=predict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from issf.data.h5 import FeatureFile
from issf.data.prepare import (
    UNLABELLED_SUBSET,
    PrepareError,
    PrepareFileNotFoundError,
    WriterOptions,
    convert_unlabelled_per_video,
    prepare_from_config,
)
from tests.data.test_convert import _features, _video_table, write_wtalc


def write_npy_folder(folder: Path, videos: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in videos.items():
        np.save(folder / f"{name}.npy", x)
    return folder


def some_videos(dim: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {name: rng.normal(size=(length, dim)).astype(np.float32)
            for name, length in (("walk_02", 9), ("jump", 4), ("walk_01", 13))}


def test_per_video_folder_gives_an_unlabelled_file_with_the_input_features(tmp_path):
    videos = some_videos()
    folder = write_npy_folder(tmp_path / "feats", videos)
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps({"walk_01": 8.5}))
    out = tmp_path / "mine.h5"
    report = prepare_from_config({"format": "per_video", "annotations": "none", "feature_dir": str(folder),
                                  "durations": str(durations), "snippet_seconds": 0.5}, out)
    assert not report.labelled and "unlabelled" in str(report) and report.videos == {UNLABELLED_SUBSET: 3}
    f = FeatureFile(out)
    assert f.labelled is False and f.class_names == [] and f.labels.shape == (3, 0)
    assert f.video_ids == sorted(videos) and set(f.subsets.tolist()) == {UNLABELLED_SUBSET}
    assert len(f.segments) == 0 and len(f.ambiguous) == 0 and f.snippet_seconds == 0.5
    for v, name in enumerate(f.video_ids):
        np.testing.assert_array_equal(f.features(v), videos[name])
    # the given duration, else T * snippet_seconds
    assert f.durations.tolist() == [2.0, 8.5, 4.5]
    assert f.verify() == f.checksum
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".h5"] == ["mine.h5"]  # no temporary left


def test_a_labelled_file_says_so(tmp_path):
    from issf.data.prepare import convert_per_video
    from tests.data.test_convert import write_per_video

    feature_dir, annotation = write_per_video(tmp_path / "src")
    convert_per_video(feature_dir, annotation, tmp_path / "labelled.h5")
    assert FeatureFile(tmp_path / "labelled.h5").labelled is True


def test_wtalc_features_without_annotation_files(tmp_path):
    table = _video_table()
    feats = _features(table)
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, feats)
    out = tmp_path / "named.h5"
    # the data config's annotation options at their defaults are dropped, not an error
    report = prepare_from_config({"format": "wtalc", "annotations": "none", "folder": str(folder),
                                  "labels_from": "video", "dtype": "float32"}, out)
    f = FeatureFile(out)
    assert not f.labelled and report.videos == {UNLABELLED_SUBSET: len(table)}
    assert f.video_ids == [v["id"] for v in table]  # videoname.npy, when the folder has it
    assert f.durations.tolist() == [v["duration"] for v in table]  # duration.npy likewise
    for v in range(len(table)):
        np.testing.assert_array_equal(f.features(v), feats[v].astype(np.float32))

    for name in ("videoname", "subset", "duration", "classlist", "segments", "labels", "labels_all"):
        os.remove(folder / f"{name}.npy")
    report = prepare_from_config({"format": "wtalc", "annotations": "none", "folder": str(folder)},
                                 tmp_path / "bare.h5")
    f = FeatureFile(tmp_path / "bare.h5")
    assert f.video_ids == [f"video_{i:05d}" for i in range(len(table))]
    assert any("videoname.npy" in n for n in report.notes)
    np.testing.assert_allclose(f.durations, f.lengths * 16 / 25)


def test_features_are_validated_and_errors_name_file_video_and_field(tmp_path):
    videos = some_videos()
    videos["jump"][2, 1] = np.nan
    folder = write_npy_folder(tmp_path / "nan", videos)
    with pytest.raises(PrepareError, match=r"nan/jump\.npy: video jump: features: 1 NaN") as err:
        convert_unlabelled_per_video(folder, tmp_path / "out.h5")
    assert (err.value.video, err.value.field) == ("jump", "features")

    folder = write_npy_folder(tmp_path / "flat", {"a": np.zeros((4, 6)), "b": np.zeros(6)})
    with pytest.raises(PrepareError, match=r"video b: features: features must be 2-D"):
        convert_unlabelled_per_video(folder, tmp_path / "out.h5")

    folder = write_npy_folder(tmp_path / "dims", {"a": np.zeros((4, 6)), "b": np.zeros((4, 5))})
    with pytest.raises(PrepareError, match=r"b\.npy: video b: features: feature dim 5 differs from 6"):
        convert_unlabelled_per_video(folder, tmp_path / "out.h5")
    folder = write_npy_folder(tmp_path / "want", {"a": np.zeros((4, 6))})
    with pytest.raises(PrepareError, match=r"video a: features: feature dim 6 differs from 2048"):
        convert_unlabelled_per_video(folder, tmp_path / "out.h5", writer=WriterOptions(feature_dim=2048))

    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareFileNotFoundError, match="no feature file matches"):
        convert_unlabelled_per_video(tmp_path / "empty", tmp_path / "out.h5")
    folder = write_npy_folder(tmp_path / "two" / "rgb", {"a": np.zeros((4, 3)), "b": np.zeros((4, 3))})
    write_npy_folder(tmp_path / "two" / "flow", {"a": np.zeros((4, 3))})
    with pytest.raises(PrepareFileNotFoundError, match=r"flow/b\.npy: video b: features: 1 video"):
        convert_unlabelled_per_video(tmp_path / "two", tmp_path / "out.h5", rgb_flow=True)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": -1}))
    with pytest.raises(PrepareError, match=r"bad\.json: video a: durations: duration must be a positive"):
        convert_unlabelled_per_video(tmp_path / "want", tmp_path / "out.h5", durations=bad)
    assert not (tmp_path / "out.h5").exists()


def test_annotation_options_and_unknown_values_are_refused(tmp_path):
    folder = write_npy_folder(tmp_path / "feats", some_videos())
    base = {"format": "per_video", "annotations": "none", "feature_dir": str(folder)}
    with pytest.raises(ValueError, match=r"data.prepare.annotation_file: reads annotations.*~data.prepare.annotation_file"):
        prepare_from_config({**base, "annotation_file": "gt.json"}, tmp_path / "out.h5")
    with pytest.raises(ValueError, match=r"data.prepare.labels_from: reads annotations"):
        prepare_from_config({**base, "labels_from": "segments"}, tmp_path / "out.h5")
    with pytest.raises(ValueError, match=r"data.prepare.annotations: must be required .* or none"):
        prepare_from_config({**base, "annotations": "maybe"}, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    prepare_from_config(base, tmp_path / "out.h5")
    with pytest.raises(FileExistsError, match="data.prepare.overwrite=true"):
        prepare_from_config(base, tmp_path / "out.h5")
