"""issf command line: `python run.py [task=train|eval|prepare|synthesize|verify|report] [overrides]`.

The only Hydra entry point; it builds objects from the config and hands them to the `issf` library.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from issf.io import atomic_write


def ensure_data(cfg: DictConfig) -> None:
    """Generate the built-in synthetic dataset when the config asks for it and the file is missing."""
    if cfg.data.get("synthetic") is None:
        return
    from issf.data.synthetic import SyntheticConfig, ensure_dataset

    synth = SyntheticConfig(**OmegaConf.to_container(cfg.data.synthetic, resolve=True))
    path = Path(cfg.data.datamodule.path)
    if not path.exists():
        print(f"generating the built-in dataset {path} ({synth.num_train} training / {synth.num_test} test videos)")
    ensure_dataset(synth, path)


def validate_config(cfg: DictConfig) -> None:
    """Check the network and evaluation settings by type and value before any work is done (a
    mistyped option fails at once, naming the key, not after the dataset is generated)."""
    from issf.eval.evaluator import EvaluationConfig
    from issf.model.config import ISSFConfig

    ISSFConfig(**OmegaConf.to_container(cfg.model.network, resolve=True))
    evaluation = EvaluationConfig(**OmegaConf.to_container(cfg.data.evaluation, resolve=True))
    evaluation.localization_config()


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
    return _rename_key(OmegaConf.to_container(cfg, resolve=True), "_target_", "target")


def _rename_key(node, old: str, new: str):
    """``node`` (nested dicts and lists) with every dict key ``old`` renamed ``new``."""
    if isinstance(node, dict):
        return {(new if k == old else k): _rename_key(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename_key(v, old, new) for v in node]
    return node


def flat_config(cfg: DictConfig) -> dict:
    """The settings a W&B user filters runs by, as flat dotted keys: task, experiment and ablation
    preset, seed, and every value below ``model``, ``data`` (generator and prepare options left
    out) and ``trainer``."""
    flat = {"task": cfg.task, "seed": cfg.seed, **hydra_choices()}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        else:
            flat[prefix] = node

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for group in ("model", "data", "trainer"):
        node = resolved.get(group) or {}
        walk(group, {k: v for k, v in node.items() if k not in ("synthetic", "prepare", "run_config")})
    return flat


def hydra_choices() -> dict:
    """The experiment and ablation preset this run was composed with (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: choices[k] for k in ("experiment", "ablation", "data") if choices.get(k)}


def wandb_identity(cfg: DictConfig, task_overrides: list[str]) -> tuple[str, list[str]]:
    """W&B run name (experiment + the overrides that set this run apart, e.g.
    ``thumos_full-ablation=full-seed=3``) and tags (the configured ones + ablation preset + seed)."""
    choices = hydra_choices()
    skip = ("paths.", "hydra.", "logger", "callbacks", "experiment=", "ckpt_path=")
    parts = [o.lstrip("+~") for o in task_overrides if not o.lstrip("+~").startswith(skip)]
    name = "-".join([choices.get("experiment", "run"), *parts])
    tags = [*(cfg.get("tags") or []), f"seed={cfg.seed}"]
    if choices.get("ablation"):
        tags.append(f"ablation={choices['ablation']}")
    return name, tags


def build_trainer(cfg: DictConfig):
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_hyperparams(flat_config(cfg))
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def task_train(cfg: DictConfig, output_dir: Path) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from issf.pipeline import fit_and_test

    validate_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    ensure_data(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path, module.hparams.num_classes, module.hparams.input_dim)
        carry_history(Path(cfg.ckpt_path), output_dir)
    trainer = build_trainer(cfg)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Lightning's handler alone: it stops at the next step
    try:
        return fit_and_test(trainer, module, datamodule, output_dir, ckpt_path=cfg.get("ckpt_path"),
                            test=cfg.test_after_fit)
    except SIGTERMException:  # Lightning stops at the next step; last.ckpt holds the last whole epoch
        resume = output_dir / "checkpoints" / "last.ckpt"
        print(f"stopped by SIGTERM; resume with: python run.py {' '.join(_command_overrides())} "
              f"ckpt_path={resume}" if resume.is_file() else "stopped by SIGTERM before the first epoch ended",
              file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    finally:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        _teardown_ddp_children(trainer)


SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process killed by it


def check_checkpoint(path: str, num_classes: int, input_dim: int) -> None:
    """Fail early, naming the file, when ``path`` is not an issf checkpoint or does not fit the data."""
    from issf.checkpoints import check_checkpoint_fits, read_checkpoint

    check_checkpoint_fits(read_checkpoint(path), path, num_classes, input_dim)


def carry_history(ckpt_path: Path, output_dir: Path) -> None:
    """A run resumed into a new directory starts from a copy of the old run's CSV history."""
    import shutil

    old = ckpt_path.resolve().parent.parent / "csv" / "metrics.csv"
    new = output_dir / "csv" / "metrics.csv"
    if old.is_file() and not new.exists() and old.resolve() != new.resolve():
        new.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(old, new)


def _command_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]


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
    from issf.pipeline import evaluate_checkpoint, evaluate_detections_file, evaluate_predictions

    validate_config(cfg)
    if (cfg.get("ckpt_path") or cfg.get("predictions")) and not cfg.get("detections"):
        use_checkpoint_data(cfg)
    ensure_data(cfg)
    datamodule = build_datamodule(cfg)
    if cfg.get("predictions"):
        return evaluate_predictions(cfg.predictions, datamodule, output_dir, evaluation_overrides(cfg))
    if cfg.get("detections"):
        return evaluate_detections_file(cfg.detections, datamodule, dict(OmegaConf.to_container(
            cfg.data.evaluation, resolve=True)), output_dir)
    if not cfg.get("ckpt_path"):
        raise ValueError("task=eval needs ckpt_path=<checkpoint>, predictions=<run>/predictions.h5 or "
                         "detections=<results.json>")
    trainer = build_trainer(cfg)
    return evaluate_checkpoint(cfg.ckpt_path, trainer, datamodule, output_dir, evaluation_overrides(cfg))


def use_checkpoint_data(cfg: DictConfig, task_overrides: list[str] | None = None) -> None:
    """``task=eval ckpt_path=...`` / ``predictions=...``: evaluate on the data the checkpoint or the
    predictions came from (their stored run config), unless ``data=``/``experiment=``/``data.*`` is
    given on the command line."""
    from hydra.core.hydra_config import HydraConfig

    if task_overrides is None:
        task_overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in task_overrides]
    if any(k in ("data", "experiment") or (k.startswith("data.") and not k.startswith("data.evaluation"))
           for k in keys):
        return
    if cfg.get("predictions"):
        from issf.eval.predictions import read_predictions

        source, stored = cfg.predictions, read_predictions(cfg.predictions).data
    else:
        from issf.checkpoints import read_checkpoint

        source = cfg.ckpt_path
        stored = read_checkpoint(cfg.ckpt_path)["hyper_parameters"].get("run_config", {}).get("data")
    if not stored:
        return

    data = OmegaConf.create(_rename_key(stored, "target", "_target_"))  # stored by _plain_config
    data.evaluation = cfg.data.evaluation  # where command-line evaluation overrides are read from
    with open_dict(cfg):
        cfg.data = data
    print(f"data of {source}: {cfg.data.get('name')} ({cfg.data.datamodule.path})")


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


def task_verify(cfg: DictConfig, output_dir: Path) -> dict:
    """Recompute the feature file's checksum and compare it with the one stored at prepare time."""
    from issf.data.h5 import FeatureFile

    path = cfg.data.datamodule.path
    checksum = FeatureFile(path).verify()
    print(f"{path}: content unchanged since it was prepared ({checksum})")
    return {"path": path, "checksum": checksum}


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
    print(f"wrote {Path(cfg.dir) / 'report.md'} and {Path(cfg.dir) / 'report.csv'}")
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
         "verify": task_verify, "report": task_report}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.task not in TASKS:
        raise ValueError(f"unknown task={cfg.task!r}; choose one of {sorted(TASKS)}")
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    # SIGTERM unwinds like an error, so files being written are cleaned up (training replaces this
    # handler with Lightning's, which stops at the next step)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    quiet_third_party()
    _patch_ddp_launcher()
    if cfg.get("logger") and cfg.logger.get("wandb"):
        name, tags = wandb_identity(cfg, list(hc.overrides.task))
        cfg.logger.wandb.name = cfg.logger.wandb.name or name
        cfg.logger.wandb.tags = tags
        if hc.mode == RunMode.MULTIRUN:
            cfg.logger.wandb.group = cfg.logger.wandb.group or Path(hc.sweep.dir).name  # one W&B group per sweep
    with run_directory_lock(output_dir):
        with atomic_write(output_dir / "config_resolved.yaml", "w") as f:
            f.write(OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.task in ("train", "eval") and cfg.get("print_config", True) and _launching_process():
            print_config_tree(cfg)
        try:
            result = TASKS[cfg.task](cfg, output_dir)
        finally:
            _finish_wandb()
    if cfg.task in ("train", "eval") and _launching_process():
        written = sorted(p.name + ("/" if p.is_dir() else "") for p in output_dir.iterdir() if not p.name.startswith("."))
        print(f"run directory: {output_dir}\n  {' '.join(written)}")
    value = (result or {}).get("test", {}).get(cfg.get("optimized_metric") or "AVG")
    return float(value) if value is not None else None


# known third-party console noise, filtered in this one place: deprecation notes of Lightning's
# internals, its advertising and accelerator lines, W&B's notice about an unused setting, and
# Lightning's advice to sync epoch-level logs across ranks (evaluation metrics are gathered by the
# metrics themselves; training losses are logged per rank on purpose)
_NOISY_WARNINGS = (r".*LeafSpec.*", r".*anonymous setting has no effect.*", r".*sync_dist=True.*")
_NOISY_LIGHTNING_LINES = ("litlogger", "GPU available", "TPU available", "HPU available")


def quiet_third_party() -> None:
    import logging
    import warnings

    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not any(text in record.getMessage() for text in _NOISY_LIGHTNING_LINES))


def print_config_tree(cfg: DictConfig) -> None:
    """The resolved config as a tree, one branch per top-level group (as lightning-hydra-template)."""
    from rich import print as rich_print
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(str(key)).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    rich_print(tree)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(SIGTERM_EXIT_CODE)


def _launching_process() -> bool:
    """False in the DDP ranks a job starts through the command line (they share its directory)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def run_directory_lock(output_dir: Path):
    """The run directory's lock (issf.run_lock), taken by the launching process only: DDP ranks it
    starts write into the same directory."""
    import contextlib

    from issf.run_lock import RunDirectoryLock

    if not _launching_process():
        return contextlib.nullcontext()
    return RunDirectoryLock(output_dir)


def resume_directory(task: str, ckpt_path: str | None, default: str) -> str:
    """Hydra resolver for ``hydra.run.dir``: training resumed from ``<run>/checkpoints/*.ckpt``
    continues in ``<run>`` (its logs, best checkpoint and history), any other run gets ``default``."""
    if task == "train" and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).resolve().parent.parent)
    return default


def known_task(task: str) -> str:
    """Hydra resolver for the output paths: an unknown task stops before Hydra makes its directory."""
    if task not in TASKS:
        raise ValueError(f"unknown task={task!r}; choose one of {', '.join(sorted(TASKS))}")
    return task


OmegaConf.register_new_resolver("resume_directory", resume_directory, replace=True)
OmegaConf.register_new_resolver("known_task", known_task, replace=True)


def _finish_wandb() -> None:
    """Close the W&B run of this job so the next multirun job starts its own (docs/framework.md, item 2)."""
    import sys

    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if getattr(wandb, "run", None) is not None:
            wandb.finish()


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, name its directory and the report command."""

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        sweep_dir = config.hydra.sweep.dir
        print(f"sweep directory: {sweep_dir}\ntable of the jobs: python run.py task=report dir={sweep_dir}")


def _check_task_argument(argv: list[str]) -> None:
    """A mistyped ``task=`` stops with one line, before Hydra makes any directory (the
    ``known_task`` resolver is the backstop for other ways of setting it)."""
    for arg in argv:
        if arg.startswith("task="):
            for task in arg.split("=", 1)[1].split(","):
                if task not in TASKS:
                    sys.exit(f"run.py: unknown task={task!r}; choose one of {', '.join(sorted(TASKS))}")


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    if "--version" in sys.argv[1:]:
        from issf import __version__

        sys.exit(print(f"issf {__version__}"))
    _check_task_argument(sys.argv[1:])
    main()
