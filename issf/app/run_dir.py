"""Run directories: where a run writes (Hydra resolvers), its lock, and the history a resumed run
carries over."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

from issf.app.ddp import launching_process
from issf.app.run_lock import RunDirectoryLock


def resume_directory(task: str, ckpt_path: str | None, default: str) -> str:
    """Hydra resolver for ``hydra.run.dir``: training resumed from ``<run>/checkpoints/*.ckpt``
    continues in ``<run>`` (its logs, best checkpoint and history), any other run gets a new
    directory named ``default`` (:func:`claim_directory`). An empty ``default`` only names the
    resumed run's directory (nothing is created)."""
    if task == "train" and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).resolve().parent.parent)
    return claim_directory(default) if default else default


_CLAIMED: dict[str, str] = {}


def claim_directory(path: str) -> str:
    """Hydra resolver ``unique_directory``: create ``path`` and return it, or, when it exists (a run
    started in the same second), ``path_2``, ``path_3``, ...: ``mkdir`` is atomic, so two processes
    never share a directory. The same ``path`` gives the same directory again within a process."""
    if path not in _CLAIMED:
        base = candidate = Path(path)
        number = 1
        while True:
            try:
                candidate.mkdir(parents=True)
                break
            except FileExistsError:
                number += 1
                candidate = base.with_name(f"{base.name}_{number}")
        _CLAIMED[path] = str(candidate)
    return _CLAIMED[path]


# what a run directory holds before the task writes: Hydra's files, the lock and the resolved config
HYDRA_OWN = {".hydra", "run.log", ".issf.lock", "config_resolved.yaml"}


def remove_unused_claims() -> list[Path]:
    """Remove the directories this process claimed that hold nothing but :data:`HYDRA_OWN` (a
    command that failed before doing any work leaves no run directory behind); returns them."""
    removed = []
    for claimed in _CLAIMED.values():
        folder = Path(claimed)
        if folder.is_dir() and {p.name for p in folder.iterdir()} <= HYDRA_OWN:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class RunDirectoryNotWritable(RuntimeError):
    """An existing run directory that nothing can be written into (a read-only mount, no permission)."""


def check_writable(folder: Path) -> None:
    """Raise :class:`RunDirectoryNotWritable` naming ``folder`` when a file cannot be created in it.
    Tried with a nameless temporary file before Hydra writes its config copy and log there (its
    own error would be a traceback about a logging handler), so nothing in the folder changes."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise RunDirectoryNotWritable(
            f"run directory {folder} cannot be written ({err.strerror or err}); make it writable, or "
            f"run into another directory: hydra.run.dir=<new directory>") from None


def run_directory_lock(output_dir: Path) -> AbstractContextManager[object]:
    """The run directory's lock (``run_lock``), taken by the launching process only: DDP ranks it
    starts write into the same directory."""
    if not launching_process():
        return contextlib.nullcontext()
    return RunDirectoryLock(output_dir)


def carry_history(ckpt_path: Path, output_dir: Path) -> None:
    """A run resumed into a new directory starts from a copy of the old run's CSV history."""
    old = ckpt_path.resolve().parent.parent / "csv" / "metrics.csv"
    new = output_dir / "csv" / "metrics.csv"
    if old.is_file() and not new.exists() and old.resolve() != new.resolve():
        new.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(old, new)
