"""Hyper-parameter search (``hparams_search=issf_optuna``, ``task=search``): the objective is a
validation figure, a search without held-out validation videos is refused, and a 4-trial search of
the smoke experiment runs to the end with the best trial's validation and test figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from issf.app import tasks
from issf.app.search import (
    check_objective,
    distribution,
    objective,
    override_value,
    trial_overrides,
    trial_record,
)
from tests.conftest import compose_cfg
from tests.markers import requires_package
from tests.reference import ROOT


@pytest.mark.parametrize("experiment", ["smoke", "synthetic", "thumos_official"])
def test_hparams_search_config_optimizes_a_validation_metric(tmp_path, experiment):
    cfg = compose_cfg(tmp_path, f"experiment={experiment}", "hparams_search=issf_optuna")
    assert cfg.task == "search"
    assert cfg.data.datamodule.val_fraction > 0  # set by the search config (thumos_official alone has 0)
    assert cfg.optimized_metric.startswith("val/")
    assert cfg.callbacks.model_checkpoint.monitor == cfg.optimized_metric  # test_val_selected tests that checkpoint
    assert cfg.search.direction == "maximize" and cfg.search.n_trials >= 1 and cfg.search.sampler.seed is not None
    assert "model.optimizer.lr" in cfg.search.params and "model.network.saliency_ratio" in cfg.search.params
    check_objective(cfg)


def test_search_without_validation_videos_is_refused_before_any_work(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=smoke", "hparams_search=issf_optuna", "data.datamodule.val_fraction=0")
    with pytest.raises(ValueError, match=r"data\.datamodule\.val_fraction=0\.2") as err:
        tasks.task_search(cfg, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_training_with_an_objective_needs_validation_videos(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=smoke", "optimized_metric=val/AVG")  # val_fraction 0: val/ = test split
    with pytest.raises(ValueError, match=r"data\.datamodule\.val_fraction"):
        tasks.preflight(cfg)
    cfg = compose_cfg(tmp_path, "experiment=smoke", "data.datamodule.val_fraction=0.2", "optimized_metric=test/AVG")
    with pytest.raises(ValueError, match="optimized_metric=val/AVG"):
        tasks.preflight(cfg)


def test_task_search_needs_a_search_space(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=smoke", "task=search")
    with pytest.raises(ValueError, match="hparams_search=issf_optuna"):
        tasks.task_search(cfg, tmp_path / "out")


def test_objective_is_the_validation_figure_never_a_test_figure(tmp_path):
    train = compose_cfg(tmp_path, "experiment=smoke", "hparams_search=issf_optuna", "task=train")
    metrics = {"val_best": {"score": 12.5, "selected_on": "val"}, "test": {"AVG": 40.0},
               "test_val_selected": {"AVG": 41.0}}
    assert objective(train, metrics) == 12.5
    assert objective(train, {**metrics, "val_best": {"score": 40.0, "selected_on": "test"}}) is None
    assert objective(compose_cfg(tmp_path, "experiment=smoke"), metrics) is None  # no optimized_metric
    search = compose_cfg(tmp_path, "experiment=smoke", "hparams_search=issf_optuna")
    assert objective(search, {"best": {"val": 3.0, "test": 9.0}}) == 3.0


@requires_package("optuna")
def test_search_space_is_read_in_hydra_sweep_syntax():
    import optuna.distributions as d

    assert distribution("lr", "tag(log, interval(1e-5, 1e-3))") == d.FloatDistribution(1e-5, 1e-3, log=True)
    assert distribution("p", "interval(0.3, 0.7)") == d.FloatDistribution(0.3, 0.7)
    assert distribution("n", "int(interval(1, 8))") == d.IntDistribution(1, 8)
    assert distribution("n", "range(2, 10, 2)") == d.IntDistribution(2, 8, step=2)
    assert distribution("m", "choice(class0, gt_classes)") == d.CategoricalDistribution(["class0", "gt_classes"])
    assert distribution("x", 0.5) is None  # a fixed value


def test_trial_overrides_run_a_training_with_the_trial_values():
    base = ["hparams_search=issf_optuna", "experiment=smoke", "model.optimizer.lr=1e-3", "task=search",
            "search.n_trials=4", "~search.params", "+search.params={a:1}"]
    got = trial_overrides(base, {"model.optimizer.lr": 0.002, "model.network.memory_read": "class0",
                                 "model.network.memory": False})
    assert got == ["hparams_search=issf_optuna", "experiment=smoke", "task=train", "model.optimizer.lr=0.002",
                   "model.network.memory_read=class0", "model.network.memory=false"]
    parser = OverridesParser.create()
    for value in ("a b,c", 1e-05, 3, True):  # each value reads back as it was
        assert parser.parse_override(f"k={override_value(value)}").value() == value


def test_a_trial_without_a_validation_figure_is_a_failed_trial(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text(json.dumps({"test": {"AVG": 5.0}}))
    record = trial_record(0, {"model.optimizer.lr": 0.001}, ["task=train"], tmp_path / "0", 0, "val/AVG")
    assert record["state"] == "FAIL" and record["val"] is None and record["test_last_epoch"] == 5.0
    assert trial_record(1, {}, [], tmp_path / "1", 1, "val/AVG")["state"] == "FAIL"


@pytest.mark.slow
@requires_package("optuna")
def test_four_trial_search_of_the_smoke_experiment(tmp_path):
    space = '{model.optimizer.lr:"tag(log, interval(1e-3, 1e-2))", model.network.dropout:"interval(0.3, 0.7)"}'
    args = ["hparams_search=issf_optuna", "experiment=smoke", "search.n_trials=4", "trainer.max_epochs=4",
            f"paths.root_dir={tmp_path}", "print_config=false", "~callbacks.plots", "~search.params",
            f"+search.params={space}"]
    out = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    (search_dir,) = (tmp_path / "logs" / "search" / "runs").iterdir()
    results = yaml.safe_load((search_dir / "optimization_results.yaml").read_text())
    trials = results["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3] and {t["state"] for t in trials} == {"COMPLETE"}
    for t in trials:  # each trial is a normal training run in its own directory
        run = search_dir / str(t["trial"])
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["val_best"]["selected_on"] == "val"
        assert t["val"] == pytest.approx(metrics["val_best"]["score"])
        assert t["test"] == pytest.approx(metrics["test_val_selected"]["AVG"])
        resolved = yaml.safe_load((run / "config_resolved.yaml").read_text())
        assert resolved["task"] == "train" and resolved["data"]["datamodule"]["val_fraction"] == 0.2
        assert resolved["model"]["optimizer"]["lr"] == pytest.approx(t["params"]["model.optimizer.lr"])
        assert 1e-3 <= t["params"]["model.optimizer.lr"] <= 1e-2
    assert len({t["params"]["model.optimizer.lr"] for t in trials}) == 4
    best = results["best"]
    assert best == trials[best["trial"]] and best["val"] == max(t["val"] for t in trials)
    assert "task=train" in best["command"] and f"model.optimizer.lr={best['params']['model.optimizer.lr']!r}" in best["command"]
    assert (search_dir / "optimization_results.md").read_text().count("| COMPLETE |") == 4
    report = tasks.task_report(compose_cfg(tmp_path, "task=report", f"dir={search_dir}"), tmp_path / "report")
    assert len(report["rows"]) == 4 and (search_dir / "report.md").is_file()
