"""One process per run directory: an advisory lock file naming its holder.

The lock is an ``flock`` on ``<run dir>/.issf.lock``: the kernel releases it when the holder exits,
however it exits (``kill -9`` included), so a stale lock never blocks a resume. A second process
that tries to use the directory stops at once with the holder's pid, host and command.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
from pathlib import Path
from typing import IO

from issf.utils.io import remove_stale_temporaries

LOCK_NAME = ".issf.lock"
log = logging.getLogger(__name__)


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory."""


class RunDirectoryLock:
    """Context manager holding ``<folder>/.issf.lock``; on entry also removes the temporary files
    that killed processes left in the folder (logged as warnings)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._file: IO[str] | None = None

    def __enter__(self) -> RunDirectoryLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            f.close()
            raise RunDirectoryBusy(
                f"run directory {self.folder} is in use by {holder}; wait for it to finish, stop it, or "
                f"run into another directory: hydra.run.dir=<new directory>"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)}\n")
        f.flush()
        self._file = f
        for tmp in remove_stale_temporaries(self.folder):
            log.warning(f"removed {tmp}, left by an interrupted process")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock; the file stays (harmless, reused)
            self._file = None
