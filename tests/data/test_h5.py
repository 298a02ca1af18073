"""HDF5 feature file: write/read round trip, atomic writes, lazy per-process handles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from issf.data.h5 import FeatureFile, VideoEntry, write_feature_file


def entries(n: int = 5, dim: int = 8, seed: int = 0) -> list[VideoEntry]:
    rng = np.random.default_rng(seed)
    out = []
    for v in range(n):
        t = int(rng.integers(1, 40))
        segs = np.sort(rng.uniform(0, t * 0.64, size=(v % 3, 2)), axis=1)
        out.append(
            VideoEntry(
                video_id=f"vid{v}", subset="train" if v % 2 else "test", duration=t * 0.64,
                features=rng.random((t, dim)).astype(np.float32),
                labels=np.eye(3, dtype=np.uint8)[v % 3], segments=segs,
                segment_labels=np.full(len(segs), v % 3), ambiguous=np.array([[0.0, 0.5]]) if v == 0 else np.zeros((0, 2)),
            )
        )
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    videos = entries()
    path = write_feature_file(tmp_path / "f.h5", videos, ["a", "b", "c"], snippet_seconds=0.64, feature_name="x",
                              dtype=dtype)
    f = FeatureFile(path)
    assert f.class_names == ["a", "b", "c"] and f.feature_dim == 8 and f.snippet_seconds == 0.64
    assert f.video_ids == [v.video_id for v in videos]
    for i, v in enumerate(videos):
        np.testing.assert_allclose(f.features(i), v.features, rtol=1e-3 if dtype == "float16" else 0)
        assert f.features(i).dtype == np.float32
    gt = f.ground_truth("train")
    assert gt.video_ids == ["vid1", "vid3"]
    expected = np.concatenate([videos[1].segments, videos[3].segments])
    np.testing.assert_array_equal(gt.segments, expected)
    assert set(gt.segment_video.tolist()) <= {0, 1}
    test = f.ground_truth("test")
    assert test.video_ids == ["vid0", "vid2", "vid4"] and len(test.ambiguous) == 1 and test.ambiguous_video[0] == 0
    assert f.checksum.startswith("sha256:")


def test_checksum_depends_on_content(tmp_path):
    a = write_feature_file(tmp_path / "a.h5", entries(), ["a", "b", "c"], snippet_seconds=0.64, feature_name="x")
    b = write_feature_file(tmp_path / "b.h5", entries(), ["a", "b", "c"], snippet_seconds=0.64, feature_name="x")
    c = write_feature_file(tmp_path / "c.h5", entries(seed=1), ["a", "b", "c"], snippet_seconds=0.64, feature_name="x")
    assert FeatureFile(a).checksum == FeatureFile(b).checksum != FeatureFile(c).checksum


def test_failed_write_leaves_nothing_and_existing_file_needs_overwrite(tmp_path):
    def broken():
        yield from entries(2)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        write_feature_file(tmp_path / "f.h5", broken(), ["a", "b", "c"], snippet_seconds=0.64, feature_name="x")
    assert list(tmp_path.iterdir()) == []
    write_feature_file(tmp_path / "f.h5", entries(), ["a", "b", "c"], snippet_seconds=0.64, feature_name="x")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_feature_file(tmp_path / "f.h5", entries(), ["a", "b", "c"], snippet_seconds=0.64, feature_name="x")


def test_handle_is_lazy_and_not_pickled(tmp_path):
    path = write_feature_file(tmp_path / "f.h5", entries(), ["a", "b", "c"], snippet_seconds=0.64, feature_name="x")
    f = FeatureFile(path)
    assert f._handle is None
    f.features(0)
    assert f._handle is not None
    clone = pickle.loads(pickle.dumps(f))
    assert clone._handle is None
    np.testing.assert_array_equal(clone.features(1), f.features(1))
    f._pid = -1  # as if inherited by a forked worker: a fresh handle is opened
    old = f._handle
    f.features(0)
    assert f._handle is not old
