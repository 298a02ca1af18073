"""Objects from the config: the dataset (generated when built in), data module, LightningModule
and Trainer, and the run config as plain data for the checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from issf.app.overrides import flat_config, rename_key
from issf.train.module import ISSFModule

log = logging.getLogger(__name__)


def ensure_data(cfg: DictConfig) -> None:
    """Make a built-in dataset when the config asks for one: the synthetic generator's file when it
    is missing, or the real-recording setting's W-TALC folder and its prepared file (through the
    ``task=prepare`` converter) when missing or built with other settings."""
    if cfg.data.get("recordings") is not None:
        from issf.data.recordings import ensure_recordings

        prepare = OmegaConf.to_container(cfg.data.prepare, resolve=True) if cfg.data.get("prepare") else None
        ensure_recordings(OmegaConf.to_container(cfg.data.recordings, resolve=True), cfg.data.datamodule.path,
                          prepare)
    if cfg.data.get("synthetic") is None:
        return
    from issf.data.synthetic import SyntheticConfig, ensure_dataset

    synth = SyntheticConfig(**OmegaConf.to_container(cfg.data.synthetic, resolve=True))
    path = Path(cfg.data.datamodule.path)
    if not path.exists():
        log.info(f"generating the built-in dataset {path} ({synth.num_train} training / {synth.num_test} test videos)")
    ensure_dataset(synth, path)


def validate_config(cfg: DictConfig) -> None:
    """Check the network and evaluation settings by type and value before any work is done (a
    mistyped option fails at once, naming the key, not after the dataset is generated)."""
    from issf.eval.evaluator import EvaluationConfig
    from issf.model.config import ISSFConfig

    ISSFConfig(**OmegaConf.to_container(cfg.model.network, resolve=True))
    evaluation = EvaluationConfig(**OmegaConf.to_container(cfg.data.evaluation, resolve=True))
    evaluation.localization_config()


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return hydra.utils.instantiate(cfg.data.datamodule)


def build_module(cfg: DictConfig, datamodule: pl.LightningDataModule) -> ISSFModule:
    datamodule.setup()
    return hydra.utils.instantiate(
        cfg.model, num_classes=len(datamodule.class_names), input_dim=datamodule.feature_dim,
        class_names=list(datamodule.class_names), snippet_seconds=datamodule.snippet_seconds,
        run_config=plain_config(cfg),  # saved with the hyper-parameters: loggers show the whole run config
    )


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain data; `_target_` keys become `target` so that Hydra does not
    instantiate them again when the dict is handed to the module."""
    return rename_key(OmegaConf.to_container(cfg, resolve=True), "_target_", "target")


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_hyperparams(flat_config(cfg))
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
