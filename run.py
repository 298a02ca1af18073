"""issf command line: `python run.py [task=train|eval|prepare|synthesize|report] [overrides]`.

The only Hydra entry point; it builds objects from the config and hands them to the `issf` library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


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
        run_config=_plain_config(cfg),  # saved with the hyper-parameters: loggers show the whole run config
    )


def _plain_config(cfg: DictConfig) -> dict:
    """The resolved run config as plain data; `_target_` keys become `target` so that Hydra does not
    instantiate them again when the dict is handed to the module."""

    def rename(node):
        if isinstance(node, dict):
            return {("target" if k == "_target_" else k): rename(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    return rename(OmegaConf.to_container(cfg, resolve=True))


def build_trainer(cfg: DictConfig):
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def task_train(cfg: DictConfig, output_dir: Path) -> dict:
    import pytorch_lightning as pl

    from issf.pipeline import fit_and_test

    pl.seed_everything(cfg.seed, workers=True)
    ensure_data(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    try:
        return fit_and_test(trainer, module, datamodule, output_dir, ckpt_path=cfg.get("ckpt_path"),
                            test=cfg.test_after_fit)
    finally:
        _teardown_ddp_children(trainer)


# --------------------------------------------------------------------------------------------
# `strategy=ddp` under Hydra: Lightning starts each extra rank by re-running the command line. In a
# multirun that command line is the whole sweep, so every child would start the sweep again
# (docs/framework.md, item 1). Children instead get this job's own overrides in RUN mode and
# write into this job's directory; after the job the launching process reaps them and resets the
# distributed state so the next job of the sweep can start its own.

def _ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    command = [sys.executable, os.path.abspath(sys.argv[0]), *hc.overrides.task,
               "hydra.mode=RUN", f'hydra.run.dir="{hc.runtime.output_dir}"',
               f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null",
               f"hydra.job.chdir={bool(hc.job.chdir)}"]
    return command, get_original_cwd()


def _patch_ddp_launcher() -> None:
    from lightning_fabric.strategies.launchers import subprocess_script as fabric_launcher
    from pytorch_lightning.strategies.launchers import subprocess_script as pl_launcher

    fabric_launcher._hydra_subprocess_cmd = _ddp_child_command
    pl_launcher._hydra_subprocess_cmd = _ddp_child_command  # bound at import time there: patch both


def _teardown_ddp_children(trainer) -> None:
    import subprocess

    children = [p for p in getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
                if isinstance(p, subprocess.Popen)]  # script launcher only (fork/spawn join their own)
    if not children:  # only the process that launched the children tears down
        return
    import torch.distributed as dist

    for proc in children:
        proc.wait()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)


def task_eval(cfg: DictConfig, output_dir: Path) -> dict:
    from issf.pipeline import evaluate_checkpoint, evaluate_detections_file

    ensure_data(cfg)
    datamodule = build_datamodule(cfg)
    if cfg.get("detections"):
        return evaluate_detections_file(cfg.detections, datamodule, dict(OmegaConf.to_container(
            cfg.data.evaluation, resolve=True)), output_dir)
    if not cfg.get("ckpt_path"):
        raise ValueError("task=eval needs ckpt_path=<checkpoint> or detections=<results.json>")
    trainer = build_trainer(cfg)
    return evaluate_checkpoint(cfg.ckpt_path, trainer, datamodule, output_dir, evaluation_overrides(cfg))


def evaluation_overrides(cfg: DictConfig, task_overrides: list[str] | None = None) -> dict:
    """The ``data.evaluation.*`` values given on the command line (``task_overrides``, default:
    this Hydra run's), as dotted keys below ``evaluation``: a checkpoint is evaluated with its own
    settings, these replaced."""
    from hydra.core.hydra_config import HydraConfig

    if task_overrides is None:
        task_overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    prefix = "data.evaluation."
    keys = [o.split("=", 1)[0].lstrip("+~") for o in task_overrides]
    values = {k[len(prefix):]: OmegaConf.select(cfg, k) for k in keys if k.startswith(prefix)}
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}


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
    report = write_report(cfg.dir)
    if cfg.get("logger") and cfg.logger.get("wandb"):
        log_report_to_wandb(report, cfg, Path(cfg.dir))
    return report


def log_report_to_wandb(report: dict, cfg: DictConfig, sweep_dir: Path) -> None:
    """The ablation table as a W&B table in the sweep's group (offline unless configured)."""
    import wandb

    w = cfg.logger.wandb
    run = wandb.init(project=w.project, group=sweep_dir.name, job_type="report", dir=str(sweep_dir),
                     mode="offline" if w.offline else "online", config={"sweep_dir": str(sweep_dir)})
    columns = ["configuration", "seeds"] + [f"{c} {s}" for c in report["columns"] for s in ("mean", "std")]
    rows = [[r["config"], r["n"]] + [x for c in report["columns"] for x in r["stats"][c]] for r in report["rows"]]
    run.log({"ablation": wandb.Table(columns=columns, data=rows)})
    run.finish()


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
    _patch_ddp_launcher()
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
    """Close the W&B run of this job so the next multirun job starts its own (docs/framework.md, item 2)."""
    import sys

    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if getattr(wandb, "run", None) is not None:
            wandb.finish()


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
