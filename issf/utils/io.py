"""Small file helpers shared by the pipeline and the LightningModule."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

TMP_MARK = ".tmp-"  # temporaries are named .<final name>.tmp-<pid>


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON atomically (temp file + rename); numpy values become plain numbers/lists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=_json_default)
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def tagged_file(folder: str | os.PathLike, name: str, tag: str) -> Path:
    """``folder/name`` for the last weights' test (``tag`` "test"), ``folder/<stem>_<tag><ext>``
    otherwise: ``predictions.h5``, ``predictions_test_val_selected.h5``."""
    path = Path(folder) / name
    return path if tag == "test" else path.with_name(f"{path.stem}_{tag}{path.suffix}")


def temporary_path(path: Path) -> Path:
    """The hidden temporary name a file is written under before it is renamed to ``path``."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is flushed, fsynced and renamed to
    ``path``, on any error removed (so ``path`` is either the old file or the complete new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporaries (see :func:`temporary_path`) that processes no longer running left in
    ``folder`` and its sub-folders (or only those of the file ``name`` in ``folder``); returns them."""
    removed = []
    found = Path(folder).glob(f".{name}{TMP_MARK}*") if name else Path(folder).rglob(f".*{TMP_MARK}*")
    for tmp in found:
        pid = tmp.name.rsplit(TMP_MARK, 1)[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
