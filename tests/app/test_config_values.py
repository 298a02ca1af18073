"""Nonsense values (issue #28, item 6): each is refused before any work, naming the config key and
the allowed range; the values that depend on the data are refused when the data module is set up,
before fitting."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import pytest

from issf.app import tasks
from tests.conftest import ROOT, compose_cfg

SMOKE = ["experiment=smoke", "~callbacks.plots"]


@pytest.mark.parametrize("override,message", [
    ("data.datamodule.batch_size=-1", "data.datamodule.batch_size: must be an integer >= 1, got -1"),
    ("data.datamodule.batch_size=0", "data.datamodule.batch_size: must be an integer >= 1, got 0"),
    ("data.datamodule.eval_batch_size=0", "data.datamodule.eval_batch_size: must be an integer >= 1"),
    ("data.datamodule.val_fraction=1.0", "data.datamodule.val_fraction: must be in [0, 1)"),
    ("data.datamodule.val_fraction=-0.1", "data.datamodule.val_fraction: must be in [0, 1)"),
    ("data.datamodule.train_sample_length=0", "data.datamodule.train_sample_length: must be null (full-length"),
    ("trainer.max_epochs=0", "trainer.max_epochs: must be an integer >= 1 for task=train, got 0"),
    ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch: must be null or an integer >= 1"),
    ("model.network.memory_slots=0", "model.network.memory_slots: must be an integer >= 1, got 0"),
    ("model.network.dropout=1.0", "model.network.dropout: must be in [0, 1), got 1.0"),
    ("model.network.embed_dim=0", "model.network.embed_dim: must be an integer >= 1, got 0"),
    ("model.network.reduce=0", "model.network.reduce: must be an integer >= 1, got 0"),
    ("model.network.reduce=128", "model.network.reduce: must be <= embed_dim (64)"),
    ("model.network.att_ratio=0", "model.network.att_ratio: must be > 0, got 0"),
    ("model.network.tau=0", "model.network.tau: must be > 0, got 0"),
    ("model.network.lamb=-0.1", "model.network.lamb: must be in [0, 1], got -0.1"),
    ("model.network.scale=-1", "model.network.scale: must be > 0, got -1"),
    ("model.network.scale=0", "model.network.scale: must be > 0, got 0"),
    ("model.network.saliency_ratio=0", "model.network.saliency_ratio: must be in (0, 1], got 0"),
    ("model.optimizer.lr=-1", "model.optimizer.lr: must be a number > 0, got -1"),
    ("model.optimizer.lr=0", "model.optimizer.lr: must be a number > 0, got 0"),
    ("data.evaluation.localization.nms_threshold=2", "data.evaluation.localization.nms_threshold: must be in (0, 1], got 2"),
    ("data.evaluation.localization.nms_threshold=-1", "data.evaluation.localization.nms_threshold: must be in (0, 1]"),
    ("data.evaluation.localization.min_length=0", "data.evaluation.localization.min_length: must be an integer >= 1"),
    ("data.evaluation.localization.outer_ratio=-0.5", "data.evaluation.localization.outer_ratio: must be >= 0"),
    ("data.evaluation.tiou_thresholds=[]", "data.evaluation.tiou_thresholds: must be a non-empty list"),
])
def test_nonsense_values_stop_before_any_work_naming_key_and_range(tmp_path, override, message):
    cfg = compose_cfg(tmp_path, *SMOKE, override)
    with pytest.raises(ValueError, match=re.escape(message)):
        tasks.task_train(cfg, tmp_path / "out")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # no dataset generated


def test_valid_configs_pass_the_checks(tmp_path):
    from issf.app.build import validate_config

    for experiment in ("smoke", "synthetic", "thumos_full", "thumos_official", "anet_full", "anet_synthetic",
                       "recordings"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no average range dropped either
            validate_config(compose_cfg(tmp_path, f"experiment={experiment}"))


def test_an_average_over_thresholds_not_evaluated_is_dropped_with_a_warning():
    from issf.eval.evaluator import EvaluationConfig

    with pytest.warns(UserWarning, match=re.escape("data.evaluation.average_ranges.AVG(0.1:0.7) [0.1, 0.7] dropped")):
        cfg = EvaluationConfig(tiou_thresholds=[0.5])
    assert cfg.average_ranges == {}
    cfg = EvaluationConfig(tiou_thresholds=[0.1, 0.3, 0.5], average_ranges={"AVG(0.1:0.5)": [0.1, 0.5],
                                                                          "AVG(0.3:0.7)": [0.3, 0.7]})
    assert list(cfg.average_ranges) == ["AVG(0.1:0.5)"]


def _smoke_datamodule(tmp_path, *overrides):
    from issf.app.build import build_datamodule, ensure_data

    cfg = compose_cfg(tmp_path, *SMOKE, *overrides)
    ensure_data(cfg)
    return build_datamodule(cfg)


def test_data_dependent_values_stop_at_setup_before_fitting(tmp_path):
    dm = _smoke_datamodule(tmp_path, "data.datamodule.test_subsets=[tset]")
    with pytest.raises(ValueError, match=re.escape("data.datamodule.test_subsets: ['tset'] not in")) as caught:
        dm.setup()
    assert "its subsets are ['test', 'train']" in str(caught.value)
    dm = _smoke_datamodule(tmp_path, "data.datamodule.val_fraction=0.99")  # 24 training videos: rounds to all
    with pytest.raises(ValueError, match=r"data.datamodule.val_fraction: 0.99 holds out all 24 training videos"):
        dm.setup()


def test_a_saliency_ratio_selecting_no_snippet_stops_at_fit_start(tmp_path):
    from issf.app.build import build_module

    dm = _smoke_datamodule(tmp_path, "model.network.saliency_ratio=0.0001")
    module = build_module(compose_cfg(tmp_path, *SMOKE, "model.network.saliency_ratio=0.0001"), dm)
    with pytest.raises(ValueError, match=r"model.network.saliency_ratio: 0.0001 selects no salient snippet"):
        module._check_saliency_ratio(dm)
    module = build_module(compose_cfg(tmp_path, *SMOKE), dm)
    module._check_saliency_ratio(dm)  # the default passes


@pytest.mark.slow
@pytest.mark.parametrize("override", ["data.datamodule.batch_size=-1", "data.datamodule.val_fraction=1.0"])
def test_no_training_batch_is_a_nonzero_exit_before_any_work(tmp_path, override):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *SMOKE, f"paths.root_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path / 'run'}", override],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert override.split("=")[0] in proc.stdout + proc.stderr
    assert not (tmp_path / "data" / "synthetic_smoke.h5").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
