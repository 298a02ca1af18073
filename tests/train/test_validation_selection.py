"""Checkpoint selection on validation videos held out from the training split
(``data.datamodule.val_fraction > 0``): a split fixed by the seed, the test split's curve kept
apart, and the selected checkpoint's test reported under its own name."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from issf.app import build, tasks
from tests.conftest import compose_cfg
from tests.reference import ROOT

SPLIT_SCRIPT = (
    "import sys; from issf.data.datamodule import FeatureDataModule\n"
    "dm = FeatureDataModule(sys.argv[1], val_fraction=0.25, seed=int(sys.argv[2])); dm.setup()\n"
    "print(','.join(map(str, dm.val_indices.tolist())), '|', ','.join(map(str, dm.train_indices.tolist())))\n"
)


def _smoke_file(tmp_path) -> str:
    cfg = compose_cfg(tmp_path, "experiment=smoke")
    build.ensure_data(cfg)
    return cfg.data.datamodule.path


def _split_in_a_new_process(path: str, seed: int) -> str:
    out = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT, path, str(seed)], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONHASHSEED": str(seed * 7 + 1), "PATH": "/usr/bin:/bin"})
    return out.stdout.strip()


def test_the_split_is_fixed_by_the_seed_across_process_starts(tmp_path):
    path = _smoke_file(tmp_path)
    first, second = _split_in_a_new_process(path, 3), _split_in_a_new_process(path, 3)
    assert first == second
    val, train = (set(map(int, part.split(","))) for part in first.split(" | "))
    assert len(val) == 6 and not val & train and len(val | train) == 24  # a quarter of 24, disjoint, all kept
    assert _split_in_a_new_process(path, 4) != first  # another seed, another split


@pytest.mark.slow
def test_validation_selected_checkpoint_is_reported_apart_and_equals_its_eval(tmp_path):
    out = tmp_path / "run"
    cfg = compose_cfg(tmp_path, "experiment=smoke", "data.datamodule.val_fraction=0.25", f"paths.output_dir={out}",
                      "callbacks.plots=null")
    metrics = tasks.task_train(cfg, out)
    assert "test_val_selected" in metrics and "test_best_on_test" not in metrics
    assert metrics["val_best"]["selected_on"] == "val"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_val_selected"] == metrics["test_val_selected"]

    # the curve: selection split (val/*) and the test split (test_curve/*) at the same epochs, apart
    with open(out / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/AVG")]
    assert [int(r["epoch"]) for r in rows] == [1, 3, 5]
    assert all(r["test_curve/AVG"] not in ("", None) for r in rows)
    assert any(r["val/AVG"] != r["test_curve/AVG"] for r in rows)
    best = max(rows, key=lambda r: float(r["val/AVG"]))  # selection follows val, not the test curve
    assert int(best["epoch"]) == metrics["val_best"]["epoch"]

    # the reported figure is the test of exactly that checkpoint
    ckpt = out / metrics["val_best"]["path"]
    again = tasks.task_eval(compose_cfg(tmp_path, "task=eval", f"ckpt_path={ckpt}", "logger=none",
                                        "callbacks.plots=null"), tmp_path / "eval")
    for key, value in metrics["test_val_selected"].items():
        assert again["test"][key] == pytest.approx(value, abs=1e-9), key


def test_the_split_survives_a_resume_and_is_the_same_on_every_rank(tmp_path, monkeypatch):
    from issf.data.datamodule import FeatureDataModule

    path = _smoke_file(tmp_path)
    splits = []
    for rank in (0, 1):  # the split does not read the rank: every DDP process holds the same one
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        dm = FeatureDataModule(path, val_fraction=0.25, seed=5)
        dm.setup()
        splits.append((dm.val_indices.tolist(), dm.train_indices.tolist()))
    assert splits[0] == splits[1]
    # a resume builds a new data module from the run config: the same (path, fraction, seed) give the same split
    resumed = FeatureDataModule(path, val_fraction=0.25, seed=5)
    resumed.setup()
    assert resumed.val_indices.tolist() == splits[0][0]
    assert np.array_equal(np.sort(np.r_[resumed.val_indices, resumed.train_indices]), np.arange(24))


def test_early_stopping_is_an_opt_in_callback_on_the_selection_metric(tmp_path):
    from pytorch_lightning.callbacks import EarlyStopping

    default = build.build_trainer(compose_cfg(tmp_path, "experiment=smoke", "logger=none"))
    assert not [c for c in default.callbacks if isinstance(c, EarlyStopping)]
    cfg = compose_cfg(tmp_path, "experiment=smoke", "logger=none", "callbacks=[default,early_stopping]")
    stoppers = [c for c in build.build_trainer(cfg).callbacks if isinstance(c, EarlyStopping)]
    assert len(stoppers) == 1 and stoppers[0].monitor == "val/AVG" and stoppers[0].mode == "max"
    assert cfg.callbacks.model_checkpoint.monitor == stoppers[0].monitor  # stops on what selects
