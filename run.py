"""issf command line: `python run.py [task=train|eval|prepare|synthesize|report] [overrides]`.

The only Hydra entry point; it builds objects from the config and hands them to the `issf` library.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("issf")


def ensure_data(cfg: DictConfig) -> None:
    """Generate the built-in synthetic dataset when the config asks for it and the file is missing."""
    if cfg.data.get("synthetic") is None:
        return
    from issf.data.synthetic import SyntheticConfig, ensure_dataset

    synth = SyntheticConfig(**OmegaConf.to_container(cfg.data.synthetic, resolve=True))
    ensure_dataset(synth, cfg.data.datamodule.path)


def build_datamodule(cfg: DictConfig):
    return hydra.utils.instantiate(cfg.data.datamodule)


def build_module(cfg: DictConfig, datamodule):
    datamodule.setup()
    return hydra.utils.instantiate(
        cfg.model, num_classes=len(datamodule.class_names), input_dim=datamodule.feature_dim,
        class_names=list(datamodule.class_names), snippet_seconds=datamodule.snippet_seconds,
    )


def build_trainer(cfg: DictConfig, output_dir: Path):
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:  # the whole resolved config, not only the module's arguments
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def task_train(cfg: DictConfig, output_dir: Path) -> dict:
    import pytorch_lightning as pl

    from issf.pipeline import fit_and_test

    pl.seed_everything(cfg.seed, workers=True)
    ensure_data(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg, output_dir)
    return fit_and_test(trainer, module, datamodule, output_dir, ckpt_path=cfg.get("ckpt_path"),
                        test=cfg.test_after_fit)


def task_eval(cfg: DictConfig, output_dir: Path) -> dict:
    from issf.pipeline import evaluate_checkpoint, evaluate_detections_file

    ensure_data(cfg)
    datamodule = build_datamodule(cfg)
    if cfg.get("detections"):
        return evaluate_detections_file(cfg.detections, datamodule, dict(OmegaConf.to_container(
            cfg.data.evaluation, resolve=True)), output_dir)
    if not cfg.get("ckpt_path"):
        raise ValueError("task=eval needs ckpt_path=<checkpoint> or detections=<results.json>")
    trainer = build_trainer(cfg, output_dir)
    return evaluate_checkpoint(cfg.ckpt_path, trainer, datamodule, output_dir)


def task_synthesize(cfg: DictConfig, output_dir: Path) -> dict:
    ensure_data(cfg)
    return {"path": cfg.data.datamodule.path}


def task_prepare(cfg: DictConfig, output_dir: Path) -> dict:
    from issf.data.convert import prepare_from_config

    report = prepare_from_config(OmegaConf.to_container(cfg.data.prepare, resolve=True), cfg.data.datamodule.path)
    print(report)
    return {"path": cfg.data.datamodule.path}


def task_report(cfg: DictConfig, output_dir: Path) -> dict:
    from issf.report import write_report

    if not cfg.get("dir"):
        raise ValueError("task=report needs dir=<multirun directory>")
    return write_report(cfg.dir, output_dir)


TASKS = {"train": task_train, "eval": task_eval, "synthesize": task_synthesize, "prepare": task_prepare,
         "report": task_report}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.task not in TASKS:
        raise ValueError(f"unknown task={cfg.task!r}; choose one of {sorted(TASKS)}")
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN and cfg.get("logger") and cfg.logger.get("wandb"):
        cfg.logger.wandb.group = cfg.logger.wandb.group or Path(hc.sweep.dir).name  # one W&B group per sweep
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        result = TASKS[cfg.task](cfg, output_dir)
    finally:
        _finish_wandb()
    value = (result or {}).get("test", {}).get(cfg.get("optimized_metric") or "AVG")
    return float(value) if value is not None else None


def _finish_wandb() -> None:
    """Close the W&B run of this job so the next multirun job starts its own (pitfall 9)."""
    import sys

    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if getattr(wandb, "run", None) is not None:
            wandb.finish()


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
