"""The callbacks config group: one file per callback, ``default`` composing them (its resolved
config as before the split, plus the model summary), the opt-in ones added by a list, and every
way the project turns callbacks off."""

from __future__ import annotations

import pytest
import yaml
from pytorch_lightning.callbacks import LearningRateMonitor, ModelSummary, RichModelSummary

from issf.app import build
from issf.train.callbacks import RunModelCheckpoint
from tests.conftest import CONF_DIR, compose_cfg

CALLBACKS = f"{CONF_DIR}/callbacks"
CHECKPOINTS = "/out/checkpoints"  # below paths.output_dir (compose_cfg: <tmp_path>/out)

# the resolved `callbacks=default` (values as the single default.yaml had them, plots aside)
DEFAULT = {
    "model_checkpoint": {"_target_": "issf.train.callbacks.RunModelCheckpoint", "dirpath": CHECKPOINTS,
                         "filename": "epoch_{epoch:03d}", "auto_insert_metric_name": False, "monitor": "val/AVG",
                         "mode": "max", "save_top_k": 1, "save_last": False},
    "last_checkpoint": {"_target_": "issf.train.callbacks.RunModelCheckpoint", "dirpath": CHECKPOINTS,
                        "filename": "last", "monitor": None, "save_top_k": 1, "save_last": False, "every_n_epochs": 1,
                        "save_on_train_epoch_end": True, "enable_version_counter": False},
    "log_history": {"_target_": "issf.train.callbacks.LogHistoryOnResume"},
    "rng_state": {"_target_": "issf.train.callbacks.RNGStateCallback"},
    "progress_bar": {"_target_": "pytorch_lightning.callbacks.RichProgressBar", "refresh_rate": 5},
    "model_summary": {"_target_": "pytorch_lightning.callbacks.RichModelSummary", "max_depth": 2},
}
PLOTS = "issf.train.diagnostics.DiagnosticPlots"


def resolved(cfg) -> dict:
    from omegaconf import OmegaConf

    callbacks = OmegaConf.to_container(cfg.callbacks, resolve=True)
    for node in callbacks.values():
        if node and "dirpath" in node:
            node["dirpath"] = node["dirpath"][node["dirpath"].index("/out/"):]
    return callbacks


def test_default_composes_one_file_per_callback(tmp_path):
    default = yaml.safe_load(open(f"{CALLBACKS}/default.yaml"))
    assert list(default) == ["defaults"]  # it only composes
    keys = []
    for name in default["defaults"]:
        content = yaml.safe_load(open(f"{CALLBACKS}/{name}.yaml"))
        assert len(content) == 1, f"callbacks/{name}.yaml holds {list(content)}: one callback per file"
        keys += list(content)
    callbacks = resolved(compose_cfg(tmp_path))
    assert sorted(keys) == sorted(callbacks) == sorted([*DEFAULT, "plots"])
    assert callbacks.pop("plots")["_target_"] == PLOTS
    assert callbacks == DEFAULT


@pytest.mark.parametrize("name", ["early_stopping", "lr_monitor", "model_summary", "plots"])
def test_every_callback_file_also_composes_alone(tmp_path, name):
    callbacks = compose_cfg(tmp_path, f"callbacks={name}").callbacks
    assert len(callbacks) == 1
    build.build_trainer(compose_cfg(tmp_path, "experiment=smoke", f"callbacks={name}"))  # instantiates


def test_opt_in_callbacks_are_added_to_the_default_ones(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=smoke", "callbacks=[default,lr_monitor]")
    assert set(cfg.callbacks) == {*DEFAULT, "plots", "lr_monitor"}
    monitors = [c for c in build.build_trainer(cfg).callbacks if isinstance(c, LearningRateMonitor)]
    assert len(monitors) == 1 and monitors[0].logging_interval == "epoch"
    cfg = compose_cfg(tmp_path, "experiment=smoke", "callbacks=[default,early_stopping]")
    assert set(cfg.callbacks) == {*DEFAULT, "plots", "early_stopping"}


def test_the_parameter_count_comes_from_one_summary(tmp_path):
    """Lightning's own summary is off in every trainer config, so the default callbacks' one is the
    only one (printed once when fitting starts)."""
    for trainer in ("default", "cpu", "gpu", "bf16", "ddp", "ddp_cpu"):
        assert compose_cfg(tmp_path, f"trainer={trainer}").trainer.enable_model_summary is False, trainer
    summaries = [c for c in build.build_trainer(compose_cfg(tmp_path, "experiment=smoke")).callbacks
                 if isinstance(c, ModelSummary)]
    assert len(summaries) == 1 and isinstance(summaries[0], RichModelSummary)


@pytest.mark.parametrize("overrides", [["callbacks=none"], ["debug=default"], ["callbacks=none", "debug=default"],
                                       ["callbacks.model_checkpoint=null", "callbacks.plots=null"]])
def test_callbacks_switched_off(tmp_path, overrides):
    cfg = compose_cfg(tmp_path, "experiment=smoke", *overrides)
    trainer = build.build_trainer(cfg)
    checkpoints = [c for c in trainer.callbacks if isinstance(c, RunModelCheckpoint)]
    if "callbacks=none" in overrides:  # the smoke experiment's plot settings alone build nothing
        assert all("_target_" not in (v or {}) for v in cfg.callbacks.values())
        assert all(type(c).__module__.startswith("pytorch_lightning.") for c in trainer.callbacks)
    if "callbacks=none" in overrides or "debug=default" in overrides:
        assert checkpoints == []  # debug/default.yaml's callbacks.model_checkpoint: null still applies
    else:
        assert [c.filename for c in checkpoints] == ["last"]
        assert not [c for c in trainer.callbacks if type(c).__name__ == "DiagnosticPlots"]
    # the README's sweeps drop the progress bar (the default experiment has one)
    assert "progress_bar" not in compose_cfg(tmp_path, "~callbacks.progress_bar").callbacks
