"""What the command line said: this run's overrides, the Hydra choices it was composed with, and
what follows from them (the data a checkpoint is evaluated on, evaluation overrides, W&B naming)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def task_overrides() -> list[str]:
    """This Hydra run's command-line overrides (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def command_overrides() -> list[str]:
    """This run's overrides without ``ckpt_path=`` (to print a resume command)."""
    return [o for o in task_overrides() if not o.startswith("ckpt_path=")]


def hydra_choices() -> dict[str, str]:
    """The experiment and ablation preset this run was composed with (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: choices[k] for k in ("experiment", "ablation", "data") if choices.get(k)}


def rename_key(node: Any, old: str, new: str) -> Any:
    """``node`` (nested dicts and lists) with every dict key ``old`` renamed ``new``."""
    if isinstance(node, dict):
        return {(new if k == old else k): rename_key(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [rename_key(v, old, new) for v in node]
    return node


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The settings a W&B user filters runs by, as flat dotted keys: task, experiment and ablation
    preset, seed, and every value below ``model``, ``data`` (generator and prepare options left
    out) and ``trainer``."""
    flat = {"task": cfg.task, "seed": cfg.seed, **hydra_choices()}

    def walk(prefix: str, node: Any) -> None:
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


def wandb_identity(cfg: DictConfig, overrides: list[str]) -> tuple[str, list[str]]:
    """W&B run name (experiment + the overrides that set this run apart, e.g.
    ``thumos_full-ablation=full-seed=3``) and tags (the configured ones + ablation preset + seed)."""
    choices = hydra_choices()
    skip = ("paths.", "hydra.", "logger", "callbacks", "experiment=", "ckpt_path=")
    parts = [o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(skip)]
    name = "-".join([choices.get("experiment", "run"), *parts])
    tags = [*(cfg.get("tags") or []), f"seed={cfg.seed}"]
    if choices.get("ablation"):
        tags.append(f"ablation={choices['ablation']}")
    return name, tags


def use_checkpoint_data(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """``task=eval ckpt_path=...`` / ``predictions=...``: evaluate on the data the checkpoint or the
    predictions came from (their stored run config), unless ``data=``/``experiment=``/``data.*`` is
    given on the command line."""
    if overrides is None:
        overrides = task_overrides()
    if data_on_command_line(overrides):
        return
    if cfg.get("predictions"):
        from issf.eval.predictions import read_predictions

        source, stored = cfg.predictions, read_predictions(cfg.predictions).data
    else:
        from issf.train.checkpoints import read_checkpoint

        source = cfg.ckpt_path
        stored = read_checkpoint(cfg.ckpt_path)["hyper_parameters"].get("run_config", {}).get("data")
    if not stored:
        return

    data = OmegaConf.create(rename_key(stored, "target", "_target_"))  # stored by build.plain_config
    data.evaluation = cfg.data.evaluation  # where command-line evaluation overrides are read from
    with open_dict(cfg):
        cfg.data = data
    log.info(f"data of {source}: {cfg.data.get('name')} ({cfg.data.datamodule.path})")


def data_on_command_line(overrides: list[str]) -> bool:
    """Whether ``overrides`` choose the data (``data=``, ``experiment=``, ``data.*`` other than
    ``data.evaluation.*``)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    return any(k in ("data", "experiment") or (k.startswith("data.") and not k.startswith("data.evaluation"))
               for k in keys)


def config_used(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """The config a task runs with, as ``config_resolved.yaml`` records it and the console shows it:
    ``cfg`` itself, except for ``task=eval`` / ``task=predict`` of a checkpoint (``ckpt_path=``,
    without ``predictions=`` / ``detections=``), which runs the checkpoint's network: then a copy
    holding the checkpoint's stored ``model`` and ``seed``, its ``data`` unless the command line
    chooses the data (as :func:`use_checkpoint_data`), and its evaluation settings with the command
    line's ``data.evaluation.*`` applied (what the evaluation uses)."""
    if cfg.get("task") not in ("eval", "predict") or not cfg.get("ckpt_path") or cfg.get("predictions") \
            or cfg.get("detections"):
        return cfg
    from issf.train.checkpoints import read_checkpoint
    from issf.train.pipeline import with_overrides

    if overrides is None:
        overrides = task_overrides()
    hparams = read_checkpoint(cfg.ckpt_path)["hyper_parameters"]  # names the file when it is not a checkpoint
    stored = rename_key(hparams.get("run_config") or {}, "target", "_target_")  # stored by build.plain_config
    evaluation = with_overrides(hparams.get("evaluation"), evaluation_overrides(cfg, overrides))
    used = copy.deepcopy(cfg)
    with open_dict(used):
        if stored.get("model"):
            used.model = OmegaConf.create(stored["model"])
            used.model.evaluation = evaluation
        if stored.get("seed") is not None:
            used.seed = stored["seed"]
        if stored.get("data") and not data_on_command_line(overrides):
            used.data = OmegaConf.create(stored["data"])
        used.data.evaluation = evaluation
    return used


def evaluation_overrides(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """The ``data.evaluation.*`` values given on the command line (``overrides``, default:
    this Hydra run's), as dotted keys below ``evaluation``: a checkpoint is evaluated with its own
    settings, these replaced."""
    if overrides is None:
        overrides = task_overrides()
    prefix = "data.evaluation."
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    values = {k[len(prefix):]: OmegaConf.select(cfg, k) for k in keys if k.startswith(prefix)}
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}


def sweep_jobs(sweep_dir: str | Path) -> list[list[str]]:
    """Each job's overrides of the sweep in ``sweep_dir``, in job-number order, expanded from its
    multirun.yaml as Hydra's basic sweeper does (``hydra.sweeper.params``, then the command line);
    empty when there is no multirun.yaml or it cannot be expanded."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    try:
        saved = OmegaConf.load(path)
        params = saved.hydra.sweeper.get("params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()] + list(saved.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(arguments)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception as err:  # a damaged or foreign multirun.yaml: the report still tables what exists
        log.warning(f"{path}: cannot list the sweep's jobs ({type(err).__name__}: {err})")
        return []
