"""The Hydra entry point: ``python run.py [task=...] [overrides]`` composes ``conf/`` and runs one
task of ``issf.app.tasks`` in its run directory."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from issf.app.console import print_config_mode, quiet_third_party, show_config, user_error
from issf.app.ddp import launching_process, patch_ddp_launcher
from issf.app.overrides import config_used, hydra_choices, wandb_identity
from issf.app.run_dir import (
    RunDirectoryNotWritable,
    check_writable,
    claim_directory,
    remove_unused_claims,
    resume_directory,
    run_directory_lock,
)
from issf.app.schema import register_schemas
from issf.app.search import objective
from issf.app.tasks import TASKS, exit_on_sigterm, finish_wandb, preflight
from issf.utils.io import atomic_write

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def known_task(task: str) -> str:
    """Hydra resolver for the output paths: an unknown task stops before Hydra makes its directory."""
    if task not in TASKS:
        raise ValueError(f"unknown task={task!r}; choose one of {', '.join(sorted(TASKS))}")
    return task


OmegaConf.register_new_resolver("resume_directory", resume_directory, replace=True)
OmegaConf.register_new_resolver("known_task", known_task, replace=True)
OmegaConf.register_new_resolver("unique_directory", claim_directory, replace=True, use_cache=True)
register_schemas()


# set once main() starts writing into the run directory (its checks passed, the lock is held); until
# then cli() puts back what Hydra wrote into an existing run directory when the run fails
_WRITING = False
# the one-line messages of the jobs main() stopped on an expected user error (console.user_error),
# reported by cli() once Hydra is done; a new run directory holding nothing but the config is
# removed all the same
_REFUSALS: list[str] = []
_CLI_PID: int | None = None  # the process cli() runs in (a launcher's worker process is another)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """The task function. Hydra prints an exception escaping it with a traceback and a note about
    ``HYDRA_FULL_ERROR`` (``run_and_report``; in a multirun ``run_job`` keeps it in the job's result,
    and the sweeper raises the first one once every job ran). An expected user error is kept out of
    Hydra's way instead: the job ends without a result and :func:`cli` prints its one line
    (``run.py: ...``) and exits with 1 once Hydra is done. In a launcher's worker process it is
    raised as a compact Hydra exception, which Hydra prints as its message. With
    ``HYDRA_FULL_ERROR=1`` every error goes to Hydra as it is (the full traceback)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    try:
        return run_task(cfg, Path(hc.runtime.output_dir))
    except Exception as err:
        job = f"job {hc.job.num} ({' '.join(hc.overrides.task)}): " if hc.mode == RunMode.MULTIRUN else ""
        refusal = user_error(err, job)
        if refusal is None:
            raise
        if os.getpid() != _CLI_PID:
            raise refusal from err
        _REFUSALS.append(str(refusal))
        return None


def run_task(cfg: DictConfig, output_dir: Path) -> float | None:
    """One job of :func:`main` in its run directory ``output_dir``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    # SIGTERM unwinds like an error, so files being written are cleaned up (training replaces this
    # handler with Lightning's, which stops at the next step)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    quiet_third_party()
    patch_ddp_launcher()
    if cfg.get("logger") and cfg.logger.get("wandb"):
        name, tags = wandb_identity(cfg, list(hc.overrides.task))
        cfg.logger.wandb.name = cfg.logger.wandb.name or name
        cfg.logger.wandb.tags = tags
        if hc.mode == RunMode.MULTIRUN:
            cfg.logger.wandb.group = cfg.logger.wandb.group or Path(hc.sweep.dir).name  # one W&B group per sweep
    global _WRITING
    mode = print_config_mode(cfg.get("print_config", True))
    preflight(cfg)  # nonsense values, an unusable or changed-config resume: before anything is written
    used = config_used(cfg)  # task=eval/predict of a checkpoint: its model, data and evaluation settings
    with run_directory_lock(output_dir):
        _WRITING = True
        with atomic_write(output_dir / "config_resolved.yaml", "w") as f:
            f.write(OmegaConf.to_yaml(used, resolve=True))
        if cfg.task in ("train", "eval", "predict") and launching_process():
            show_config(used, mode, list(hc.overrides.task), hydra_choices(), output_dir)
        try:
            result = TASKS[cfg.task](cfg, output_dir)
        finally:
            finish_wandb()
    if cfg.task in ("train", "eval", "predict") and launching_process():
        written = sorted(p.name + ("/" if p.is_dir() else "") for p in output_dir.iterdir() if not p.name.startswith("."))
        log.info(f"run directory: {output_dir}\n  {' '.join(written)}")
    # to a sweeper: the validation objective (optimized_metric on held-out videos), never a test figure
    return objective(cfg, result)


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, name its directory and the report command."""

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        sweep_dir = config.hydra.sweep.dir
        log.info(f"sweep directory: {sweep_dir}\ntable of the jobs: python run.py task=report dir={sweep_dir}")


def cli(argv: list[str] | None = None) -> None:
    """``run.py``: ``--version``, a mistyped ``task=`` stopped with one line before Hydra makes any
    directory (the ``known_task`` resolver is the backstop for other ways of setting it), an
    existing run directory that cannot be written stopped with one line, then :func:`main`; the jobs
    it stopped on an expected user error end the command with their lines and exit code 1."""
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    if "--version" in argv:
        from issf import __version__

        sys.exit(print(f"issf {__version__}"))
    for arg in argv:
        if arg.startswith("task="):
            for task in arg.split("=", 1)[1].split(","):
                if task not in TASKS:
                    sys.exit(f"run.py: unknown task={task!r}; choose one of {', '.join(sorted(TASKS))}")
    folder = existing_run_directory(argv)
    if folder is not None:  # a read-only run directory: one line, before Hydra fails to write into it
        try:
            check_writable(folder)
        except RunDirectoryNotWritable as err:
            sys.exit(f"run.py: {err}")
    global _CLI_PID
    _CLI_PID = os.getpid()
    with restore_on_early_failure(folder):
        main()
        if _REFUSALS:  # expected user errors: their lines, no traceback (main)
            sys.exit("\n".join(_REFUSALS))


def existing_run_directory(argv: list[str]) -> Path | None:
    """The existing directory a single (not ``-m``) run will write into: ``hydra.run.dir=`` or the
    run of a resumed ``ckpt_path=<run>/checkpoints/*.ckpt`` (``resume_directory``); else None."""
    if any(a in ("-m", "--multirun") for a in argv):
        return None
    values = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    if "hydra.run.dir" in values:
        folder = Path(values["hydra.run.dir"])
    elif values.get("task", "train") == "train" and values.get("ckpt_path") and \
            resume_directory("train", values["ckpt_path"], ""):
        folder = Path(resume_directory("train", values["ckpt_path"], ""))
    else:
        return None
    return folder if folder.is_dir() else None


@contextlib.contextmanager
def restore_on_early_failure(folder: Path | None) -> Iterator[None]:
    """Hydra rewrites ``<run>/.hydra/*.yaml`` and appends to ``run.log`` before :func:`main` runs.
    When the run then stops before main starts writing (a failed check, a busy directory), put
    back what was there: a refused resume leaves a finished run's provenance as it was."""
    global _WRITING
    _WRITING = False
    _REFUSALS.clear()
    if folder is None:  # a new run directory: a command that fails before any work leaves none
        try:
            yield
        except BaseException as err:
            if (not isinstance(err, SystemExit) or err.code not in (0, None)) and (not _WRITING or _REFUSALS):
                remove_unused_claims()
            raise
        return
    hydra_dir = folder / ".hydra"
    saved = {p: p.read_bytes() for p in hydra_dir.glob("*.yaml")} if hydra_dir.is_dir() else {}
    had_hydra_dir = hydra_dir.is_dir()
    log_file = folder / "run.log"
    log_size = log_file.stat().st_size if log_file.is_file() else None
    try:
        yield
    except BaseException as err:
        failed = not isinstance(err, SystemExit) or err.code not in (0, None)
        if failed and not _WRITING:
            _restore(hydra_dir, had_hydra_dir, saved, log_file, log_size)
        raise


def _restore(hydra_dir: Path, had_hydra_dir: bool, saved: dict[Path, bytes], log_file: Path,
             log_size: int | None) -> None:
    try:
        if hydra_dir.is_dir():
            for p in hydra_dir.glob("*.yaml"):
                if p not in saved:
                    p.unlink()
            if not had_hydra_dir and not any(hydra_dir.iterdir()):
                hydra_dir.rmdir()
        for p, content in saved.items():
            if not p.is_file() or p.read_bytes() != content:
                with atomic_write(p, "wb") as f:
                    f.write(content)
        if log_file.is_file():
            if log_size is None:
                log_file.unlink()
            elif log_file.stat().st_size > log_size:
                os.truncate(log_file, log_size)
    except OSError as err:  # a read-only directory: Hydra could not have written either
        log.debug(f"could not restore {hydra_dir.parent}: {err}")
