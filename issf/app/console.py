"""The console: a few lines about the run at start (the whole config tree on request), expected
user errors as one line, known third-party noise filtered in one place."""

from __future__ import annotations

import logging
import os
import traceback
import warnings
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException, InstantiationException
from omegaconf import DictConfig, OmegaConf

from issf.app.run_dir import RunDirectoryNotWritable
from issf.app.run_lock import RunDirectoryBusy

log = logging.getLogger(__name__)

# known third-party console noise: deprecation notes of Lightning's internals, its advertising and
# accelerator lines, W&B's notice about an unused setting, and Lightning's advice to sync
# epoch-level logs across ranks (evaluation metrics are gathered by the metrics themselves;
# training losses are logged per rank on purpose)
_NOISY_WARNINGS = (r".*LeafSpec.*", r".*anonymous setting has no effect.*", r".*sync_dist=True.*")
_NOISY_LIGHTNING_LINES = ("litlogger", "GPU available", "TPU available", "HPU available")


def quiet_third_party() -> None:
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not any(text in record.getMessage() for text in _NOISY_LIGHTNING_LINES))


# ------------------------------------------------------------------ the config at start

def print_config_mode(value: Any) -> str:
    """``print_config``: true (or ``summary``) -> ``summary``, ``full`` -> ``full``, false -> ``none``."""
    if value is True or value == "summary":
        return "summary"
    if value is False or value is None:
        return "none"
    if value == "full":
        return "full"
    raise ValueError(f"print_config: must be true (a few lines: overrides, data, trainer, run directory), full "
                     f"(the whole resolved config as a tree) or false (nothing), got {value!r}")


# the module switches of model.network: a summary names those that differ from the defaults
_SWITCHES = ("saliency", "channel_interaction", "non_salient_branch", "memory", "pseudo_labels", "memory_read",
             "memory_background")


def config_summary(cfg: DictConfig, overrides: list[str], choices: dict[str, str], output_dir: Path) -> list[str]:
    """The lines that say what a run does: its command-line overrides, task, experiment, seed and
    tags, the feature file, network switches that differ from the defaults, the trainer's length and
    devices, and the run directory (which holds the whole config, ``config_resolved.yaml``)."""
    from issf.model.config import NetworkSettings

    run = [f"task={cfg.task}"]
    if cfg.task in ("train", "search") and choices.get("experiment"):
        run.append(f"experiment={choices['experiment']}")
    if cfg.get("ckpt_path"):
        run.append(f"ckpt_path={cfg.ckpt_path}")
    run += [f"seed={cfg.get('seed')}", f"tags={_value(list(cfg.get('tags') or []))}"]
    lines = [f"command line: {' '.join(overrides) or '(no overrides)'}", " ".join(run),
             f"data: {cfg.data.get('name')} ({cfg.data.datamodule.path})"]
    network = cfg.model.get("network") or {}
    defaults = NetworkSettings()
    changed = [f"{k}={_value(network[k])}" for k in _SWITCHES if k in network and network[k] != getattr(defaults, k)]
    if changed:
        lines.append(f"model.network: {' '.join(changed)} (other switches: the defaults)")
    trainer = cfg.get("trainer") or {}
    keys = ("max_epochs", "accelerator", "devices") if cfg.task in ("train", "search") else ("accelerator", "devices")
    lines.append("trainer: " + " ".join(f"{k}={_value(trainer.get(k))}" for k in keys))
    lines.append(f"run directory: {output_dir} (the whole config: config_resolved.yaml there; print_config=full "
                 f"prints it)")
    return lines


def _value(value: Any) -> str:
    """A config value as it is written on the command line (``false``, ``[a,b]``)."""
    if isinstance(value, list):
        return f"[{','.join(_value(v) for v in value)}]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def show_config(cfg: DictConfig, mode: str, overrides: list[str], choices: dict[str, str], output_dir: Path) -> None:
    """The run's summary (``mode`` ``summary``, through the log: also in ``run.log``), the whole
    config tree (``full``) or nothing (``none``)."""
    if mode == "summary":
        log.info("\n".join(config_summary(cfg, overrides, choices, output_dir)))
    elif mode == "full":
        print_config_tree(cfg)


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


# ------------------------------------------------------------------ expected user errors

class UserError(CompactHydraException):
    """An expected user error (a nonsense value, a missing or existing file, a refused resume, a busy
    run directory): Hydra prints a compact exception's message alone, without a traceback."""


# raised by the project's own checks, with a message that names the key or file and the fix
# (CheckpointError, ResumeConfigError, FeatureFileError, PrepareError, PredictionsError are ValueErrors)
EXPECTED = (ValueError, FileNotFoundError, FileExistsError, RunDirectoryBusy, RunDirectoryNotWritable,
            ModuleNotFoundError)
_PACKAGE = Path(__file__).resolve().parents[1]


def user_error(err: BaseException, where: str = "") -> UserError | None:
    """``err`` as one line ``run.py: [where]<message>`` when it is an expected user error raised by
    issf's own code; None for anything else (a bug keeps its traceback), and always None with
    ``HYDRA_FULL_ERROR=1``. An error of ours inside a Hydra ``instantiate`` is unwrapped."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return None
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if not isinstance(err, EXPECTED) or not _raised_by_issf(err):
        return None
    if isinstance(err, ModuleNotFoundError) and err.name is not None:  # a failed import, not our message
        return None
    return UserError(f"run.py: {where}{err}")


def _raised_by_issf(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is issf code (a ValueError from numpy or
    torch is not a message of ours)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE)
