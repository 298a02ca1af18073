"""The real-recording data setting (issf.data.recordings): determinism, statistics, exact ground
truth on the concatenated recordings, real background, and the W-TALC -> HDF5 path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from issf.data.h5 import FeatureFile
from issf.data.recordings import (
    ACTION_CLASSES,
    BACKGROUND_CLASSES,
    NAME,
    build_recordings,
    dataset_statistics,
    ensure_recordings,
    load_source,
    onset,
    piece_signal,
    raw_features,
)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf/data/recordings.yaml"
SMALL = {"num_train": 24, "num_test": 16}


def _load(folder: Path, name: str) -> np.ndarray:
    return np.load(folder / f"{name}.npy", allow_pickle=True)  # files this test suite just wrote


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def source():
    return load_source()


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """The configured dataset (200 / 120 sequences: under a second to build)."""
    return build_recordings(tmp_path_factory.mktemp("rec") / "full", seed=1)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build_recordings(tmp_path / "a", seed=3, **SMALL)
    b = build_recordings(tmp_path / "b", seed=3, **SMALL)
    c = build_recordings(tmp_path / "c", seed=4, **SMALL)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa[f"{NAME}-I3D-JOINTFeatures.npy"] != fc[f"{NAME}-I3D-JOINTFeatures.npy"]
    assert fa["segments.npy"] != fc["segments.npy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_existing_folder_needs_overwrite(tmp_path):
    out = build_recordings(tmp_path / "x", **SMALL)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_recordings(out, **SMALL)
    build_recordings(out, overwrite=True, seed=2, **SMALL)
    assert json.loads((out / "settings.json").read_text())["settings"]["seed"] == 2


def test_unknown_setting_is_named():
    with pytest.raises(ValueError, match="unknown setting.*bogus"):
        ensure_recordings({"bogus": 1}, "unused.h5")


def test_statistics(full):
    stats = dataset_statistics(full)
    assert len(stats["classes"]) >= 5 and stats["classes"] == list(ACTION_CLASSES)
    assert stats["sequences"]["validation"] >= 150 and stats["sequences"]["test"] >= 100
    assert stats["instances_per_sequence"]["min"] < stats["instances_per_sequence"]["max"]
    assert stats["snippets_per_sequence"]["min"] < stats["snippets_per_sequence"]["max"]
    assert stats["instance_seconds"]["min"] < stats["instance_seconds"]["max"]
    assert 0.3 < stats["background_fraction"] < 0.8
    assert stats["multi_class_sequences"] > 0


def test_train_and_test_use_disjoint_source_recordings(full):
    pieces = json.loads((full / "pieces.json").read_text())
    used = {"train": set(), "test": set()}
    for vid, rows in pieces.items():
        split = "train" if "_train_" in vid else "test"
        for r in rows:
            assert r["split"] == split  # a sequence only uses recordings of its own source split
            used[split].add((r["split"], r["recording"]))
    assert used["train"] and used["test"] and not used["train"] & used["test"]


def test_segments_lie_exactly_on_the_recordings(full, source):
    """Each GT segment is one action piece: same snippets, same class; the stored features are those
    of the concatenated real samples."""
    pieces = json.loads((full / "pieces.json").read_text())
    info = json.loads((full / "features.json").read_text())
    ss, w = info["snippet_seconds"], info["window"]
    names = [v.decode() for v in _load(full, "videoname")]
    feats = _load(full, f"{NAME}-I3D-JOINTFeatures")
    segments, labels, labels_all = _load(full, "segments"), _load(full, "labels"), _load(full, "labels_all")
    durations = _load(full, "duration")[:, 0]
    mean, std = np.asarray(info["mean"]), np.asarray(info["std"])
    for i, vid in enumerate(names):
        rows = pieces[vid]
        actions = [r for r in rows if r["kind"] == "action"]
        got = [(s / ss, e / ss) for s, e in segments[i]]
        assert got == [tuple(r["snippets"]) for r in actions]
        assert list(labels[i]) == [r["label"] for r in actions]
        assert set(labels_all[i]) == set(labels[i])
        assert durations[i] == len(feats[i]) * ss
        # pieces tile the sequence and are window-aligned slices of real recordings
        assert rows[0]["snippets"][0] == 0 and rows[-1]["snippets"][1] == len(feats[i])
        for a, b in zip(rows, rows[1:]):
            assert a["snippets"][1] == b["snippets"][0]
        for r in rows:
            assert (r["stop"] - r["start"]) == w * (r["snippets"][1] - r["snippets"][0])
        if i % 20 == 0:  # recompute the features of some sequences from the source samples
            signal = np.concatenate([piece_signal(source, {k: r[k] for k in r if k != "snippets"}) for r in rows])
            np.testing.assert_allclose(feats[i], ((raw_features(signal, w) - mean) / std).astype(np.float32),
                                       rtol=1e-5, atol=1e-5)


def test_background_comes_from_real_recordings(full, source):
    """Background snippets are idle stretches (before a recording's onset) or recordings of the
    held-out appliance types; action pieces start at or after their recording's onset."""
    pieces = json.loads((full / "pieces.json").read_text())
    names = source.class_names
    kinds = set()
    for rows in pieces.values():
        for r in rows:
            split, rec = r["split"], r["recording"]
            label = names[int(source.labels[split][rec])]
            assert r["label"] == label
            x = source.recording(split, rec)
            kinds.add(r["kind"])
            if r["kind"] == "idle":
                assert r["stop"] == onset(x) and r["start"] >= 0
            elif r["kind"] == "background":
                assert label in BACKGROUND_CLASSES
            else:
                assert r["kind"] == "action" and label in ACTION_CLASSES and r["start"] >= onset(x)
    assert kinds == {"idle", "background", "action"}


def test_folder_converts_to_a_feature_file(tmp_path):
    folder = build_recordings(tmp_path / "recordings_wtalc", **SMALL)
    conf = yaml.safe_load(CONF.read_text())
    try:
        from issf.data.prepare import prepare_from_config
    except ImportError:
        from issf.data.convert import prepare_from_config
    prepare = {**conf["prepare"], "folder": str(folder)}
    prepare_from_config(prepare, tmp_path / "recordings.h5")
    ff = FeatureFile(tmp_path / "recordings.h5")
    assert ff.class_names == list(ACTION_CLASSES)
    assert len(ff) == SMALL["num_train"] + SMALL["num_test"]
    assert ff.snippet_seconds == conf["recordings"]["snippet_seconds"]
    assert len(ff.indices("train")) == SMALL["num_train"] and len(ff.indices("test")) == SMALL["num_test"]


def test_ensure_recordings_builds_once_and_follows_settings(tmp_path):
    conf = yaml.safe_load(CONF.read_text())
    settings = {**conf["recordings"], **SMALL}
    h5 = tmp_path / "recordings.h5"
    ensure_recordings(settings, h5, conf["prepare"])
    first = h5.stat().st_mtime_ns
    assert FeatureFile(h5).class_names == list(ACTION_CLASSES)
    ensure_recordings(settings, h5, conf["prepare"])  # up to date: nothing rewritten
    assert h5.stat().st_mtime_ns == first
    ensure_recordings({**settings, "num_test": 10}, h5, conf["prepare"])
    assert len(FeatureFile(h5)) == SMALL["num_train"] + 10


def test_config_matches_builder_defaults():
    from issf.data.recordings import RecordingsConfig

    conf = yaml.safe_load(CONF.read_text())
    assert RecordingsConfig.from_dict(conf["recordings"]) == RecordingsConfig()
    assert conf["prepare"]["snippet_seconds"] == conf["recordings"]["snippet_seconds"]
    assert conf["evaluation"]["filter_ambiguous"] is False


@pytest.mark.slow
def test_the_user_path_prepare_then_a_short_training_beats_the_whole_video_baseline(tmp_path):
    """As a user with the builder's folder: ``python -m issf.data.recordings --out``, then
    ``python run.py task=prepare data=recordings``, then a short training of the recipe: its test
    clearly beats the whole-video baseline (20 epochs; the recipe's 60 reach ~22 against ~2)."""
    import os
    import subprocess
    import sys

    from issf.app import tasks
    from tests.conftest import compose_cfg

    env = {**os.environ, "OMP_NUM_THREADS": "1", "ISSF_ROOT": str(tmp_path)}
    folder = tmp_path / "data" / "recordings_wtalc"
    subprocess.run([sys.executable, "-m", "issf.data.recordings", "--out", str(folder)], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    out = subprocess.run([sys.executable, "run.py", "task=prepare", "data=recordings", "logger=none"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    h5 = tmp_path / "data" / "recordings.h5"
    assert FeatureFile(h5).num_classes == 7
    run = tmp_path / "run"
    cfg = compose_cfg(tmp_path, "experiment=recordings", "trainer.max_epochs=20", "trainer.check_val_every_n_epoch=10",
                      "callbacks.plots=null", "callbacks.progress_bar=null", "logger=none", f"paths.output_dir={run}")
    metrics = tasks.task_train(cfg, run)
    assert metrics["test"]["AVG(0.1:0.7)"] >= metrics["test_baseline"]["AVG(0.1:0.7)"] + 4.0, metrics["test"]
    assert metrics["test_val_selected"]["AVG(0.1:0.7)"] >= metrics["test_baseline"]["AVG(0.1:0.7)"] + 4.0
