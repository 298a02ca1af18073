"""Run every benchmark in sequence and print the records they appended to bench/results.json.

Each script runs in its own subprocess with ``OMP_NUM_THREADS=1`` and ``MKL_NUM_THREADS=1``.

    python bench/run_all.py [--quick]

``--quick`` is passed to every script (smaller cases, to check that the scripts work).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import RESULTS  # noqa: E402

# script and its arguments; every script accepts --quick
BENCHMARKS = [
    ["bench/bench_metric.py"],
    ["bench/bench_localize.py"],
    ["bench/bench_data.py"],
    ["bench/bench_anet.py"],
    ["bench/bench_train.py", "--threads", "1", "--modes", "batched,single"],
]
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def value_unit(entry: dict) -> tuple[float, str]:
    """The headline number of a record: ``value``/``unit``, else seconds (per epoch for training)."""
    if "unit" in entry:
        return entry["value"], entry["unit"]
    if "seconds_per_epoch" in entry:
        return entry["seconds_per_epoch"], "s/epoch"
    return entry["seconds"], "s"


def summary(entries: list[dict]) -> str:
    lines = [f"{'value':>12}  {'unit':<10}  benchmark: case"]
    for entry in entries:
        value, unit = value_unit(entry)
        lines.append(f"{value:>12.4g}  {unit:<10}  {entry.get('benchmark', '?')}: {entry['case']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = parser.parse_args(argv)
    before = len(load(RESULTS))
    env = {**os.environ, **THREAD_ENV}
    failed = []
    for script, *script_args in BENCHMARKS:
        cmd = [sys.executable, script, *script_args, *(["--quick"] if args.quick else [])]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=ROOT, env=env).returncode:
            failed.append(script)
    added = load(RESULTS)[before:]
    print(f"\n{len(added)} records added to {RESULTS.relative_to(ROOT)}:\n{summary(added)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
