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


def ensure_data(cfg: DictConfig) -> bool:
    """Make a built-in dataset when the config asks for one: the synthetic generator's file when it
    is missing, or the real-recording setting's W-TALC folder and its prepared file (through the
    ``task=prepare`` converter) when missing or built with other settings. A synthetic file holding
    other generator settings is left as it is: these settings get their own file
    (``<name>-<settings hash>.h5``, :func:`issf.data.synthetic.dataset_path`) and
    ``data.datamodule.path`` is set to it. Returns whether the feature file was written now."""
    made = False
    if cfg.data.get("recordings") is not None:
        from issf.data.recordings import ensure_recordings

        prepare = OmegaConf.to_container(cfg.data.prepare, resolve=True) if cfg.data.get("prepare") else None
        before = _stamp(Path(cfg.data.datamodule.path))
        ensure_recordings(OmegaConf.to_container(cfg.data.recordings, resolve=True), cfg.data.datamodule.path,
                          prepare)
        made = _stamp(Path(cfg.data.datamodule.path)) != before
    if cfg.data.get("synthetic") is None:
        return made
    from issf.data.synthetic import SyntheticConfig, dataset_path, ensure_dataset

    synth = SyntheticConfig(**OmegaConf.to_container(cfg.data.synthetic, resolve=True))
    configured = Path(cfg.data.datamodule.path)
    path = dataset_path(synth, configured)
    if path != configured:  # the configured file holds other generator settings: never rewritten in place
        log.info(f"{configured} holds other data.synthetic settings; these settings use {path}")
        cfg.data.datamodule.path = str(path)
    if not path.exists():
        log.info(f"generating the built-in dataset {path} ({synth.num_train} training / {synth.num_test} test videos)")
    before = _stamp(path)
    ensure_dataset(synth, path)
    return made or _stamp(path) != before


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells a rewritten file from the one that was there (inode, modification time)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def validate_config(cfg: DictConfig) -> None:
    """Check the network, evaluation, data-loading, trainer and optimizer settings by type and value
    before any work is done (a mistyped or nonsense option fails at once, naming the key and the
    allowed range, not after the dataset is generated or the training ran)."""
    from issf.data.datamodule import check_datamodule_settings
    from issf.eval.evaluator import EvaluationConfig
    from issf.model.config import ISSFConfig

    _check_trainer(cfg)
    ISSFConfig(**OmegaConf.to_container(cfg.model.network, resolve=True))
    evaluation = EvaluationConfig(**OmegaConf.to_container(cfg.data.evaluation, resolve=True))
    evaluation.localization_config()
    check_datamodule_settings(**OmegaConf.to_container(cfg.data.datamodule, resolve=True))
    _check_optimizer(OmegaConf.to_container(cfg.model.optimizer, resolve=True) if cfg.model.get("optimizer") else {})
    _check_wandb((cfg.get("logger") or {}).get("wandb"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.get("trainer") or {}
    max_epochs = trainer.get("max_epochs")
    if cfg.get("task") == "train" and not (_is_int(max_epochs) and max_epochs >= 1):
        raise ValueError(f"trainer.max_epochs: must be an integer >= 1 for task=train, got {max_epochs!r}")
    every = trainer.get("check_val_every_n_epoch")
    if every is not None and not (_is_int(every) and every >= 1):
        raise ValueError(f"trainer.check_val_every_n_epoch: must be null or an integer >= 1, got {every!r}")


def _check_optimizer(optimizer: dict[str, Any]) -> None:
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    lr = optimizer.get("lr", 5e-5)
    if not (number(lr) and lr > 0):
        raise ValueError(f"model.optimizer.lr: must be a number > 0, got {lr!r}")
    decay = optimizer.get("weight_decay", 0.0)
    if not (number(decay) and decay >= 0):
        raise ValueError(f"model.optimizer.weight_decay: must be a number >= 0, got {decay!r}")
    betas = optimizer.get("betas", (0.9, 0.999))
    if len(betas) != 2 or not all(number(b) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"model.optimizer.betas: must be two numbers in [0, 1), got {list(betas)!r}")
    if "_target_" in optimizer:
        _check_optimizer_class(optimizer)


def _check_optimizer_class(optimizer: dict[str, Any]) -> None:
    """``model.optimizer._target_`` names an optimizer class that takes every configured option."""
    import importlib
    import inspect

    target = str(optimizer["_target_"])
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"model.optimizer._target_: {target!r} is not an importable class; "
                         f"e.g. model.optimizer._target_=torch.optim.AdamW") from None
    accepted = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    for key in optimizer:
        if not key.startswith("_") and key not in accepted:
            raise ValueError(f"model.optimizer.{key}: {target} takes no {key!r} (its options: "
                             f"{', '.join(k for k in accepted if k != 'params')}); drop it with ~model.optimizer.{key}")


def _check_wandb(wandb: Any) -> None:
    """Lightning's WandbLogger refuses log_model with offline=True only when it is built, naming its
    Python argument; this says it before any work, as an override."""
    if wandb and wandb.get("log_model") and wandb.get("offline"):
        raise ValueError(
            f"logger.wandb.log_model={wandb.log_model}: checkpoint artifacts need a W&B run that is not offline; add "
            f"logger.wandb.offline=false (a logged-in wandb uploads them; with WANDB_MODE=offline they wait in the "
            f"offline run for `wandb sync`), or keep logger.wandb.log_model=false")


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return hydra.utils.instantiate(cfg.data.datamodule)


def build_prediction_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """``task=predict``: the data module of ``data.datamodule`` with every video of its file, whatever
    its subset, in the test split (loaded as a test loads them)."""
    from issf.data.h5 import FeatureFile

    path = Path(cfg.data.datamodule.path)
    if not path.is_file():
        raise FileNotFoundError(
            f"feature file not found: {path}; prepare a folder of <video>.npy feature files with: python run.py "
            f"task=prepare data=thumos14 data.prepare.annotations=none data.prepare.format=per_video "
            f"+data.prepare.feature_dir=<folder> data.datamodule.path={path}")
    subsets = sorted(set(FeatureFile(path).subsets.tolist()))
    return hydra.utils.instantiate(cfg.data.datamodule, train_subsets=subsets, test_subsets=subsets, val_fraction=0.0)


def build_module(cfg: DictConfig, datamodule: pl.LightningDataModule) -> ISSFModule:
    datamodule.setup()
    return hydra.utils.instantiate(
        cfg.model, num_classes=len(datamodule.class_names), input_dim=datamodule.feature_dim,
        class_names=list(datamodule.class_names), snippet_seconds=datamodule.snippet_seconds,
        run_config=plain_config(cfg),  # saved with the hyper-parameters: loggers show the whole run config
        feature_checksum=datamodule.file.checksum,  # which feature file: checked by task=eval and resumes
    )


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain data; `_target_` keys become `target` so that Hydra does not
    instantiate them again when the dict is handed to the module."""
    return rename_key(OmegaConf.to_container(cfg, resolve=True), "_target_", "target")


# the package each optional logger needs, and the extra that installs it
LOGGER_EXTRAS = {"WandbLogger": ("wandb", "wandb"), "TensorBoardLogger": ("tensorboard", "tensorboard")}


def check_logger_packages(cfg: DictConfig) -> None:
    """A logger whose package is not installed stops at once, naming the extra to install."""
    import importlib.util

    for name, node in (cfg.get("logger") or {}).items():
        target = str((node or {}).get("_target_", "")).rsplit(".", 1)[-1]
        if target in LOGGER_EXTRAS:
            package, extra = LOGGER_EXTRAS[target]
            if importlib.util.find_spec(package) is None:
                raise ModuleNotFoundError(f"logger={name} needs the {package} package: pip install -e '.[{extra}]' "
                                          f"(or choose logger=csv)")


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    check_logger_packages(cfg)
    # a node without _target_ holds an experiment's settings for a callback the chosen callbacks
    # leave out (experiment=smoke's callbacks.plots.num_videos with callbacks=none)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_hyperparams(flat_config(cfg))
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
