"""The debug config group: every file inherits debug/default.yaml through its defaults list (quick,
no checkpoints, under logs/debug/) and sets only what it is for."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from issf.app import tasks
from tests.conftest import CONF_DIR, compose_cfg

# what each file sets on top of debug/default.yaml
OWN = {
    "limit": {"max_epochs": 3, "limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 2},
    "overfit": {"max_epochs": 20, "overfit_batches": 2, "check_val_every_n_epoch": 5},
    "profiler": {"profiler": "simple"},
    "fdr": {"fast_dev_run": True},
}


def composed(tmp_path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", return_hydra_config=True,
                       overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/out", *overrides])


@pytest.mark.parametrize("name", sorted(OWN))
def test_each_debug_config_inherits_the_default_one(tmp_path, name):
    own = yaml.safe_load(open(f"{CONF_DIR}/debug/{name}.yaml"))
    assert own["defaults"] == ["default", "_self_"] and "hydra" not in own and "callbacks" not in own
    base = compose_cfg(tmp_path, "experiment=smoke", "debug=default")
    cfg = composed(tmp_path, "experiment=smoke", f"debug={name}")
    for key, value in OWN[name].items():
        assert cfg.trainer[key] == value, key
    for key in ("max_epochs", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                "check_val_every_n_epoch", "detect_anomaly", "enable_checkpointing"):
        if key not in OWN[name]:
            assert cfg.trainer[key] == base.trainer[key], key  # from debug/default.yaml
    assert cfg.trainer.enable_checkpointing is False and cfg.trainer.detect_anomaly is True
    assert cfg.callbacks.model_checkpoint is None and cfg.callbacks.last_checkpoint is None
    log_dir = f"{tmp_path}/logs/debug/"
    assert cfg.hydra.run.dir.startswith(f"{log_dir}runs/") and cfg.hydra.sweep.dir.startswith(f"{log_dir}multiruns/")


@pytest.mark.slow
def test_a_limited_debug_run_logs_the_lr_per_epoch_and_the_parameter_count_once(tmp_path, capfd):
    cfg = compose_cfg(tmp_path, "experiment=smoke", "debug=limit", "callbacks=[default,lr_monitor]",
                      "callbacks.plots=null")
    out = tmp_path / "out"
    metrics = tasks.task_train(cfg, out)
    assert metrics["epochs"] == 3 == json.loads((out / "metrics.json").read_text())["epochs"]
    assert not (out / "checkpoints").exists()
    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv", newline="")))
    assert "train/lr" not in rows[0]  # the module logs no learning rate of its own
    assert [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")] == [cfg.model.optimizer.lr] * 3
    assert len([r for r in rows if r.get("train/loss_total")]) == 3  # three batches an epoch, logged per epoch
    console = "".join(capfd.readouterr())
    assert console.count("Total params") == 1  # the model summary, printed once
