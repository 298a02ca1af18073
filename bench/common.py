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


# the figure compared across records, per key an entry may have: lower is better for times,
# higher for throughputs; `value` counts by its unit
LOWER_IS_BETTER = ("cpu_seconds_per_epoch", "seconds_per_epoch", "seconds_per_step", "seconds", "cpu_seconds")
HIGHER_IS_BETTER = ("snippets_per_second",)
UNIT_DIRECTION = {"s": "lower", "MB": "lower", "MB/s": "higher", "snippets/s": "higher"}
# what makes two records the same case (plus the machine)
CASE_KEYS = ("benchmark", "case", "device", "threads", "workers", "amp_bf16", "quick")
SLOWDOWN = 0.10


def _figures(entry: dict) -> dict[str, tuple[float, str]]:
    figures = {k: (float(entry[k]), "lower") for k in LOWER_IS_BETTER if isinstance(entry.get(k), (int, float))}
    figures |= {k: (float(entry[k]), "higher") for k in HIGHER_IS_BETTER if isinstance(entry.get(k), (int, float))}
    if isinstance(entry.get("value"), (int, float)) and entry.get("unit") in UNIT_DIRECTION:
        figures["value"] = (float(entry["value"]), UNIT_DIRECTION[entry["unit"]])
    return figures


def hardware(machine: str) -> str:
    """The part of a :func:`machine` string that decides speed: processor and CPU count (the host
    name and the kernel build change between sessions on the same hardware)."""
    fields = machine.split(" | ")
    return " | ".join(fields[1:3]) if len(fields) == 4 else machine


def regressions(entry: dict, history: list[dict], tolerance: float = SLOWDOWN) -> list[str]:
    """One line per figure of ``entry`` more than ``tolerance`` worse than the best earlier record of
    the same case on the same hardware (``CASE_KEYS`` and :func:`hardware`; other processors never compare)."""
    same = [h for h in history if hardware(h.get("machine", "")) == hardware(entry.get("machine", ""))
            and all(h.get(k) == entry.get(k) for k in CASE_KEYS)]
    lines = []
    for name, (value, direction) in _figures(entry).items():
        earlier = [_figures(h)[name][0] for h in same if name in _figures(h)]
        if not earlier:
            continue
        best = min(earlier) if direction == "lower" else max(earlier)
        worse = (value - best) / best if direction == "lower" else (best - value) / best
        if best > 0 and worse > tolerance:
            lines.append(f"SLOWER than the best earlier record: {entry.get('benchmark')} / {entry.get('case')}: "
                         f"{name} {value:.4g} vs {best:.4g} ({100 * worse:+.0f}%, {len(same)} earlier records)")
    return lines


def record(entry: dict, path: Path = RESULTS) -> list[str]:
    """Append ``entry`` (plus date, machine and command) to the JSON list at ``path`` (locked
    read-modify-write, atomic rename); print and return the regression lines against the earlier
    records (:func:`regressions`)."""
    entry = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
             "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) or "python", **entry}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else []
        slower = regressions(entry, data)
        data.append(entry)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    for line in slower:
        print(line, file=sys.stderr, flush=True)
    return slower


def report(entry: dict, entries: list[dict], save: Callable[[dict], None] | None) -> None:
    """Print ``entry``, save it (a script passes its ``record``, or None for ``--no-record``) and
    append it to ``entries``."""
    print(json.dumps({k: v for k, v in entry.items() if not k.startswith("all_")}, indent=1), flush=True)
    if save is not None:
        save(entry)
    entries.append(entry)
