"""Shared helpers of the benchmark scripts: machine description and the results file."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

# the reference data of data/reference (real annotations, evaluation cases); tests.reference imports no torch
from tests.reference import MAP_CASES, REFERENCE, THUMOS_WTALC, WTALC_CASES, case, unpack  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{platform.node()} | {cpu_model()} | {os.cpu_count()} cpus | {platform.system()} {platform.release()}"


def record(entry: dict, path: Path = RESULTS) -> None:
    """Append ``entry`` (plus date, machine and command) to the JSON list at ``path``
    (locked read-modify-write, atomic rename)."""
    entry = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
             "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) or "python", **entry}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else []
        data.append(entry)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def report(entry: dict, entries: list[dict], save: Callable[[dict], None] | None) -> None:
    """Print ``entry``, save it (a script passes its ``record``, or None for ``--no-record``) and
    append it to ``entries``."""
    print(json.dumps({k: v for k, v in entry.items() if not k.startswith("all_")}, indent=1), flush=True)
    if save is not None:
        save(entry)
    entries.append(entry)
