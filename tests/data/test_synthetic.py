"""Synthetic dataset generator: determinism, THUMOS'14-like statistics, feature properties."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path

import h5py
import numpy as np
import pytest

from issf.data.h5 import FeatureFile
from issf.data.synthetic import (
    GENERATOR_VERSION,
    SyntheticConfig,
    ensure_dataset,
    generate,
    num_snippets,
    stored_config,
)
from tests.reference import THUMOS_WTALC as ANNOTATIONS  # real THUMOS'14 layouts

CONF = Path(__file__).resolve().parents[2] / "conf/data/synthetic.yaml"


def _small(**kw) -> SyntheticConfig:
    base = dict(num_train=5, num_test=4, feature_dim=8, max_video_seconds=120.0)
    return SyntheticConfig(**{**base, **kw})


def _read(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f.attrs["checksum"], f["features"][()], f["segments/bounds"][()]


def _video_features(path: Path, subset: str, k: int) -> list[np.ndarray]:
    f = FeatureFile(path)
    return [f.features(v) for v in f.indices(subset)[:k]]


def test_same_seed_same_file_other_seed_differs(tmp_path: Path) -> None:
    a = _read(generate(_small(seed=3), tmp_path / "a.h5"))
    b = _read(generate(_small(seed=3), tmp_path / "b.h5"))
    c = _read(generate(_small(seed=4), tmp_path / "c.h5"))
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert a[0] != c[0]
    assert a[2].shape != c[2].shape or not np.array_equal(a[2], c[2])


def test_prefix_of_larger_generation_and_feature_knobs_keep_annotations(tmp_path: Path) -> None:
    big = generate(_small(num_train=6, num_test=3), tmp_path / "big.h5")
    few = generate(_small(num_train=2, num_test=1), tmp_path / "few.h5")
    for subset, k in (("train", 2), ("test", 1)):
        for x, y in zip(_video_features(big, subset, k), _video_features(few, subset, k)):
            np.testing.assert_array_equal(x, y)
    noisier = generate(_small(num_train=6, num_test=3, noise_std=0.5), tmp_path / "noisy.h5")
    np.testing.assert_array_equal(_read(big)[2], _read(noisier)[2])
    assert not np.array_equal(_read(big)[1], _read(noisier)[1])


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory: pytest.TempPathFactory) -> FeatureFile:
    cfg = SyntheticConfig(num_train=200, num_test=100, feature_dim=16, seed=0)
    return FeatureFile(generate(cfg, tmp_path_factory.mktemp("stats") / "s.h5"))


def test_statistics_match_thumos14(stats_file: FeatureFile) -> None:
    f = stats_file
    counts = np.bincount(f.segment_video, minlength=len(f))
    lengths = f.segments[:, 1] - f.segments[:, 0]
    covered = np.bincount(f.segment_video, weights=lengths, minlength=len(f)) / f.durations
    assert 10 <= counts.mean() <= 20 and 6 <= np.median(counts) <= 11
    assert counts.max() > 60  # long tail
    p10, p50, p90 = np.percentile(lengths, [10, 50, 90])
    assert 0.6 <= p10 <= 1.3 and 2.3 <= p50 <= 3.5 and 6 <= p90 <= 10.5
    assert 120 <= np.median(f.durations) <= 190
    assert 0.22 <= covered.mean() <= 0.36
    assert 0.07 <= np.mean(f.labels.sum(1) == 2) <= 0.18
    assert f.labels.sum(1).min() >= 1


def test_annotations_are_consistent(stats_file: FeatureFile) -> None:
    f = stats_file
    test = f.indices("test")
    assert set(f.ambiguous_video) <= set(test)
    assert 0.08 <= len(set(f.ambiguous_video)) / len(test) <= 0.3
    assert np.all(f.ambiguous[:, 1] > f.ambiguous[:, 0])
    assert np.all(f.ambiguous >= 0) and np.all(f.ambiguous <= f.durations[f.ambiguous_video, None] + 1e-9)
    dur = f.durations[f.segment_video]
    assert np.all(f.segments[:, 0] >= 0) and np.all(f.segments[:, 1] <= dur + 1e-9)
    assert np.all(f.segments[:, 1] > f.segments[:, 0])
    for v in range(len(f)):  # instances of a video do not overlap
        s = f.segments[f.segment_video == v]
        s = s[np.argsort(s[:, 0])]
        assert np.all(s[1:, 0] >= s[:-1, 1] - 1e-9)
    from_segments = np.zeros_like(f.labels)
    from_segments[f.segment_video, f.segment_label] = 1
    np.testing.assert_array_equal(f.labels, from_segments)
    expected_t = [num_snippets(d) for d in f.durations]
    np.testing.assert_array_equal(f.lengths, expected_t)
    x = np.concatenate([f.features(v) for v in range(0, len(f), 7)])
    assert np.isfinite(x).all() and x.min() >= 0
    assert 0.2 <= x.mean() <= 0.6


# --------------------------------------------------------------------------------------------
# feature properties


def _snippet_table(f: FeatureFile, subset: str, centre: bool = True) -> tuple[np.ndarray, ...]:
    """Features (minus the video's far-background mean when ``centre``), class inside an action
    (-1 outside), distance (s) to the nearest action, and the video's class."""
    xs, cls, dist, main = [], [], [], []
    for v in f.indices(subset):
        x = f.features(v)
        centers = (np.arange(len(x)) + 0.5) * f.snippet_seconds
        segs = f.segments[f.segment_video == v]
        labs = f.segment_label[f.segment_video == v]
        inside = np.full(len(x), -1)
        d = np.full(len(x), np.inf)
        for (s, e), label in zip(segs, labs):
            inside[(centers >= s) & (centers < e)] = label
            d = np.minimum(d, np.maximum(np.maximum(s - centers, centers - e), 0.0))
        if centre:
            far = (inside < 0) & (d > 10)
            x = x - x[far if far.any() else inside < 0].mean(0)
        xs.append(x)
        cls.append(inside)
        dist.append(d)
        main.append(np.full(len(x), np.bincount(labs).argmax()))
    return tuple(np.concatenate(a) for a in (xs, cls, dist, main))


def _class_directions(table: tuple[np.ndarray, ...], num_classes: int) -> np.ndarray:
    """[C, D] unit class directions: mean action snippet of each class minus the mean over classes."""
    x, cls, _, _ = table
    means = np.stack([x[cls == k].mean(0) for k in range(num_classes)])
    means -= means.mean(0)  # remove what all actions share (generic motion)
    return means / np.linalg.norm(means, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def feature_tables(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = SyntheticConfig(num_train=200, num_test=200, feature_dim=32, max_video_seconds=150.0, seed=1)
    f = FeatureFile(generate(cfg, tmp_path_factory.mktemp("feat") / "f.h5"))
    train, test = _snippet_table(f, "train"), _snippet_table(f, "test")
    # directions are estimated on one split and measured on the other (no shared noise)
    return dict(cfg=cfg, train=train, test=test, units_train=_class_directions(train, f.num_classes),
                units_test=_class_directions(test, f.num_classes))


def test_class_signal_beats_chance(feature_tables: dict) -> None:
    x, cls, _, _ = feature_tables["test"]
    units = feature_tables["units_train"]
    inside = cls >= 0
    accuracy = np.mean((x[inside] @ units.T).argmax(1) == cls[inside])
    assert accuracy > 3.0 / len(units), accuracy


def test_context_around_actions(feature_tables: dict) -> None:
    x, cls, dist, main = feature_tables["train"]
    proj = (x * feature_tables["units_test"][main]).sum(1)
    near = proj[(cls < 0) & (dist > 0) & (dist < 2)].mean()
    far = proj[(cls < 0) & (dist > 15)].mean()
    inside = proj[cls >= 0].mean()
    assert inside > near > far + 0.3 * (inside - far), (inside, near, far)


def test_confusable_pairs_are_closer(feature_tables: dict) -> None:
    cos = feature_tables["units_train"] @ feature_tables["units_test"].T
    cos = (cos + cos.T) / 2
    pairs = {tuple(sorted(p)) for p in feature_tables["cfg"].confusable_pairs}
    pair_cos = [cos[a, b] for a, b in pairs]
    others = [cos[a, b] for a in range(len(cos)) for b in range(a + 1, len(cos)) if (a, b) not in pairs]
    assert min(pair_cos) > np.percentile(others, 90), (pair_cos, np.percentile(others, 90))


def _quiet(**kw) -> SyntheticConfig:
    """A config without noise, drift, distractors or ambiguous events."""
    base = dict(num_train=8, num_test=0, feature_dim=32, noise_std=0.0, drift_std=0.0, channel_noise_std=0.0,
                distractor_rate=0.0, ambiguous_video_fraction=0.0, seed=2)
    return SyntheticConfig(**{**base, **kw})


def test_shot_changes_make_background_jumps(tmp_path: Path) -> None:
    def background_jumps(rate: float) -> float:
        path = generate(_quiet(shot_change_rate=rate), tmp_path / f"{rate}.h5")
        x, cls, dist, _ = _snippet_table(FeatureFile(path), "train", centre=False)
        diff = np.abs(np.diff(x, axis=0)).sum(1)
        far = (dist[1:] > 10) & (dist[:-1] > 10) & (cls[1:] < 0) & (cls[:-1] < 0)
        return float(np.percentile(diff[far], 99.5))

    assert background_jumps(0.2) > 3 * background_jumps(0.0)


def test_soft_boundaries(tmp_path: Path) -> None:
    def intermediate_fraction(ramp: float) -> float:
        cfg = _quiet(boundary_ramp_snippets=ramp, context_strength=0.0, shot_change_rate=0.0,
                     amplitude_sigma=0.0, instance_std=0.0, two_class_fraction=0.0)
        f = FeatureFile(generate(cfg, tmp_path / f"ramp{ramp}.h5"))
        levels = []
        for v in range(len(f)):
            x = f.features(v)
            change = np.abs(x - x[0]).sum(1)  # snippet 0 is background unless an action starts there
            levels.append(change / change.max())
        levels = np.concatenate(levels)
        return float(np.mean((levels > 0.2) & (levels < 0.8)) / np.mean(levels >= 0.8))

    assert intermediate_fraction(4.0) > 1.5 * intermediate_fraction(1.0)


# --------------------------------------------------------------------------------------------
# annotation layouts, caching, config


def test_layout_from_annotation_folder(tmp_path: Path) -> None:
    cfg = SyntheticConfig(from_annotations=str(ANNOTATIONS), max_videos=30, feature_dim=4)
    f = FeatureFile(generate(cfg, tmp_path / "ann.h5"))

    def load(name: str) -> np.ndarray:
        return np.load(ANNOTATIONS / f"{name}.npy", allow_pickle=True)

    names = [s.decode() for s in load("videoname")]
    subset = [s.decode() for s in load("subset")]
    duration = load("duration").reshape(-1)
    segments, labels = load("segments"), load("labels")
    classes = [s.decode() for s in load("classlist")]
    assert f.class_names == classes
    expected = [i for s in ("validation", "test") for i in [j for j, x in enumerate(subset) if x == s][:30]]
    assert f.video_ids == [names[i] for i in expected]
    assert list(f.subsets) == ["train"] * 30 + ["test"] * 30
    np.testing.assert_allclose(f.durations, duration[expected])
    np.testing.assert_array_equal(f.lengths, [max(1, math.floor(duration[i] * 25 / 16)) for i in expected])
    for v, i in enumerate(expected):
        mine = f.segments[f.segment_video == v]
        theirs = np.clip(np.asarray(segments[i], dtype=float).reshape(-1, 2), 0, duration[i])
        kept = theirs[:, 1] > theirs[:, 0]  # segments wholly past the video end are dropped
        np.testing.assert_allclose(mine, theirs[kept])
        assert [classes[k] for k in f.segment_label[f.segment_video == v]] == list(np.asarray(labels[i])[kept])
    ambiguous = {}
    for line in (ANNOTATIONS / "Ambiguous_test.txt").read_text().splitlines():
        parts = line.split(" ")
        ambiguous.setdefault(parts[0], []).append([float(parts[2]), float(parts[3])])
    expected_amb = [(v, a) for v, i in enumerate(expected) for a in ambiguous.get(names[i], [])]
    assert len(expected_amb) > 0
    np.testing.assert_allclose(f.ambiguous, [a for _, a in expected_amb])
    np.testing.assert_array_equal(f.ambiguous_video, [v for v, _ in expected_amb])


def test_ensure_dataset_generates_each_setting_into_its_own_file(tmp_path: Path) -> None:
    """Issue #28 item 1: another setting writes another file (named by a hash of the settings); the
    file that may be read by a running training is never rewritten in place."""
    from issf.data.synthetic import settings_hash

    path = tmp_path / "d.h5"
    cfg = _small(num_train=2, num_test=1)
    assert ensure_dataset(cfg, path) == path
    stamp = path.stat().st_mtime_ns
    assert ensure_dataset(_small(num_train=2, num_test=1), path) == path
    assert path.stat().st_mtime_ns == stamp
    other = ensure_dataset(_small(num_train=3, num_test=1), path)
    assert other == tmp_path / f"d-{settings_hash(_small(num_train=3, num_test=1))}.h5"
    assert path.stat().st_mtime_ns == stamp and len(FeatureFile(path)) == 3  # untouched
    assert len(FeatureFile(other)) == 4
    assert stored_config(other) == (_small(num_train=3, num_test=1).to_json(), GENERATOR_VERSION)
    assert ensure_dataset(_small(num_train=3, num_test=1), path) == other  # found again, not regenerated
    assert ensure_dataset(cfg, path) == path


def test_config_accepts_its_own_dict_and_the_yaml_block() -> None:
    cfg = SyntheticConfig()
    assert SyntheticConfig(**asdict(cfg)) == cfg
    with pytest.raises(TypeError):
        SyntheticConfig(no_such_knob=1)
    from omegaconf import OmegaConf

    block = OmegaConf.to_container(OmegaConf.load(CONF))["synthetic"]
    assert set(block) == {f.name for f in fields(SyntheticConfig)}
    assert SyntheticConfig(**block).to_json() == block
