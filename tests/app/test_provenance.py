"""A run's results are what its config says (issue #28): the feature file's identity recorded and
checked (item 1), resumes that refuse changed settings (item 2), nothing rewritten by a failed
resume (item 3), one directory per run (item 4)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from issf.app import tasks
from issf.app.resume import ResumeConfigError, check_resume_config, config_changes
from issf.app.run_dir import claim_directory
from issf.app.run_lock import RunDirectoryBusy, RunDirectoryLock
from issf.data.h5 import FeatureFile, FeatureFileError, VideoEntry, write_feature_file
from issf.train.checkpoints import CheckpointError, check_feature_identity, read_checkpoint
from tests.conftest import ROOT, compose_cfg

SMOKE = ["experiment=smoke", "~callbacks.plots"]
SHORT = [*SMOKE, "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1"]


def tiny(path: Path, value: float, videos: int = 4) -> Path:
    entries = [VideoEntry(f"v{i}", "train" if i % 2 else "test", 6.4, np.full((10, 3), value + i, np.float32),
                          np.array([1, 0], np.uint8), np.array([[0.0, 3.0]]), np.array([0])) for i in range(videos)]
    return write_feature_file(path, entries, ["a", "b"], snippet_seconds=0.64, feature_name="x", overwrite=True)


# ------------------------------------------------------------------ item 1: the feature file's identity


def test_a_feature_file_replaced_under_a_reader_is_refused_naming_both_checksums(tmp_path):
    path = tiny(tmp_path / "f.h5", 0.0)
    f = FeatureFile(path)
    before = f.checksum
    f.features(0)
    f.close()  # the fit ends: the test reopens the path
    tiny(tmp_path / "other.h5", 5.0, videos=2)
    os.replace(tmp_path / "other.h5", path)  # regenerated / prepared again with overwrite=true
    after = FeatureFile(path).checksum
    with pytest.raises(FeatureFileError, match="replaced while in use") as caught:
        f.features(0)
    assert before in str(caught.value) and after in str(caught.value)
    with pytest.raises(FeatureFileError, match=re.escape(after)):
        f.check_unchanged()


def test_other_features_than_a_checkpoint_was_trained_on_need_allow_other_features(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        check_feature_identity("sha256:aaa", "run/last.ckpt", "sha256:bbb", "data/f.h5")
    assert "sha256:aaa" in str(caught.value) and "sha256:bbb" in str(caught.value)
    assert "allow_other_features=true" in str(caught.value)
    assert check_feature_identity("sha256:aaa", "c", "sha256:bbb", "f", allow=True) == {
        "trained_feature_checksum": "sha256:aaa", "allow_other_features": True}
    assert check_feature_identity("sha256:aaa", "c", "sha256:aaa", "f") == {}


@pytest.mark.slow
def test_checksum_recorded_and_checked_by_eval_and_the_test_after_fit(tmp_path):
    from issf.app.build import build_datamodule, build_trainer, ensure_data
    from issf.train.pipeline import evaluate_checkpoint

    cfg = compose_cfg(tmp_path, *SHORT)
    out = tmp_path / "out"
    tasks.task_train(cfg, out)
    checksum = FeatureFile(tmp_path / "data" / "synthetic_smoke.h5").checksum
    assert json.loads((out / "metrics.json").read_text())["feature_checksum"] == checksum
    ckpt = out / "checkpoints" / "last.ckpt"
    assert read_checkpoint(ckpt)["hyper_parameters"]["feature_checksum"] == checksum
    with h5py.File(out / "predictions.h5") as h5:
        assert h5.attrs["feature_checksum"] == checksum

    # another data.synthetic setting: its own file, the trained-on one untouched
    other_cfg = compose_cfg(tmp_path, *SHORT, "data.synthetic.seed=5")
    ensure_data(other_cfg)
    assert Path(other_cfg.data.datamodule.path).name.startswith("synthetic_smoke-")
    assert FeatureFile(tmp_path / "data" / "synthetic_smoke.h5").checksum == checksum
    other = FeatureFile(other_cfg.data.datamodule.path).checksum
    with pytest.raises(CheckpointError) as caught:
        evaluate_checkpoint(str(ckpt), build_trainer(other_cfg), build_datamodule(other_cfg), tmp_path / "eval")
    assert checksum in str(caught.value) and other in str(caught.value)
    metrics = evaluate_checkpoint(str(ckpt), build_trainer(other_cfg), build_datamodule(other_cfg), tmp_path / "eval",
                                  allow_other_features=True)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["allow_other_features"] is True and saved["trained_feature_checksum"] == checksum
    assert saved["feature_checksum"] == other and "test" in metrics


@pytest.mark.slow
def test_the_test_after_fit_stops_when_the_features_were_replaced_during_the_fit(tmp_path):
    import pytorch_lightning as pl

    from issf.app.build import build_datamodule, build_module, build_trainer, ensure_data
    from issf.data.synthetic import SyntheticConfig, generate
    from issf.train.pipeline import fit_and_test

    cfg = compose_cfg(tmp_path, *SMOKE, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1")
    ensure_data(cfg)
    path = Path(cfg.data.datamodule.path)

    class Replace(pl.Callback):  # what a concurrent regeneration / prepare overwrite=true does
        def on_train_end(self, trainer, module):
            settings = dict(cfg.data.synthetic, seed=9, num_train=4, num_test=2)
            generate(SyntheticConfig(**settings), tmp_path / "new.h5")
            os.replace(tmp_path / "new.h5", path)

    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(Replace())
    with pytest.raises(FeatureFileError, match="replaced while in use"):
        fit_and_test(trainer, module, datamodule, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


# ------------------------------------------------------------------ item 2: resume refuses changed settings


def test_config_changes_name_each_key_and_let_free_keys_change():
    old = {"seed": 2, "trainer": {"max_epochs": 6}, "model": {"network": {"schedule_epochs": 6, "tau": 0.2},
                                                              "optimizer": {"lr": 1e-3}},
           "logger": {"csv": {"save_dir": "a"}}, "paths": {"output_dir": "a"}}
    new = {"seed": 2, "trainer": {"max_epochs": 8}, "model": {"network": {"schedule_epochs": 8, "tau": 0.2},
                                                              "optimizer": {"lr": 1e-3}},
           "logger": {"csv": {"save_dir": "b"}}, "paths": {"output_dir": "b"}}
    assert config_changes(old, new) == {}  # extending a run (the schedule follows max_epochs), other paths
    new["seed"], new["model"]["optimizer"]["lr"] = 7, 3e-3
    assert config_changes(old, new) == {"model.optimizer.lr": (1e-3, 3e-3), "seed": (2, 7)}
    checkpoint = {"hyper_parameters": {"run_config": old}}
    with pytest.raises(ResumeConfigError) as caught:
        check_resume_config(checkpoint, "run/last.ckpt", new, "refuse")
    assert "model.optimizer.lr: 0.001 -> 0.003" in str(caught.value) and "seed: 2 -> 7" in str(caught.value)
    assert check_resume_config(checkpoint, "c", new, "allow") == {
        "resume_changes": {"model.optimizer.lr": [1e-3, 3e-3], "seed": [2, 7]}}


@pytest.mark.slow
def test_resume_refuses_changed_settings_and_applies_an_allowed_lr(tmp_path):
    import csv

    out = tmp_path / "out"
    tasks.task_train(compose_cfg(tmp_path, *SHORT), out)
    ckpt = f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
    for changes, named in [(["model.optimizer.lr=3e-3"], ["model.optimizer.lr: 0.001 -> 0.003"]),
                           (["seed=7"], ["seed: 2 -> 7"]),
                           (["data.synthetic.seed=5"], ["data.synthetic.seed: 0 -> 5"]),
                           (["model.network.memory_read=gt_classes", "model.network.pseudo_labels=false"],
                            ["model.network.memory_read: 'class0' -> 'gt_classes'",
                             "model.network.pseudo_labels: True -> False"])]:
        with pytest.raises(ResumeConfigError) as caught:
            tasks.task_train(compose_cfg(tmp_path, *SHORT, "trainer.max_epochs=3", *changes, ckpt), out)
        for text in named:
            assert text in str(caught.value)
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 1  # nothing trained
    tasks.task_train(compose_cfg(tmp_path, *SHORT, "trainer.max_epochs=3", "model.optimizer.lr=3e-3",
                                 "resume_changes=allow", ckpt), out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert metrics["resume_changes"] == {"model.optimizer.lr": [0.001, 0.003]}
    rows = [r for r in csv.DictReader(open(out / "csv" / "metrics.csv")) if r.get("train/lr")]
    assert {int(r["epoch"]): float(r["train/lr"]) for r in rows} == pytest.approx({0: 1e-3, 1: 1e-3, 2: 3e-3}, rel=1e-6)


# ------------------------------------------------------------------ item 3: a failed resume writes nothing


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_directory_as_it_was(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text(f"# finished run's {name}\n")
    (run / "config_resolved.yaml").write_text("# finished run\n")
    (run / "run.log").write_text("finished\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *SMOKE, f"paths.root_dir={tmp_path}",
                           f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "damaged or truncated checkpoint" in proc.stdout + proc.stderr
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".issf.lock"}
    assert after == before
    assert not (tmp_path / "data").exists()  # stopped before the dataset was generated


# ------------------------------------------------------------------ item 4: one directory per run


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    from issf.app import run_dir

    name = str(tmp_path / "runs" / "2024-01-01_00-00-00")
    first = claim_directory(name)
    assert claim_directory(name) == first  # the same process resolves it again
    monkeypatch.setattr(run_dir, "_CLAIMED", {})  # another process, the same second
    second = claim_directory(name)
    assert (first, second) == (name, name + "_2") and Path(second).is_dir()


def test_the_busy_directory_hint_names_hydra_run_dir(tmp_path):
    with RunDirectoryLock(tmp_path):
        with pytest.raises(RunDirectoryBusy, match=re.escape("hydra.run.dir=")):
            RunDirectoryLock(tmp_path).__enter__()
