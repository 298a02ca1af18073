"""Multirun outputs -> a paper-style ablation table (rows = configurations, mean ± std over seeds)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SEED_KEYS = ("seed",)


def _job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def collect_runs(multirun_dir: str | os.PathLike, split: str = "test") -> list[dict[str, Any]]:
    """One record per finished job: its configuration key (overrides without the seed), seed and metrics."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"multirun directory not found: {root}")
    runs = []
    for metrics_path in sorted(root.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        overrides = _job_overrides(metrics_path.parent)
        seed = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") in SEED_KEYS), None)
        key = " ".join(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in SEED_KEYS) or "default"
        metrics = json.loads(metrics_path.read_text())
        if split not in metrics:
            raise KeyError(f"{metrics_path}: no '{split}' entry (keys: {sorted(metrics)})")
        runs.append({"config": key, "seed": seed, "job": metrics_path.parent.name, "metrics": metrics[split]})
    if not runs:
        raise FileNotFoundError(f"{root}: no */metrics.json found (is this a multirun directory?)")
    # overrides shared by every job (e.g. sweep=ablation) do not name a configuration
    common = set.intersection(*(set(r["config"].split()) for r in runs))
    for r in runs:
        r["config"] = " ".join(o for o in r["config"].split() if o not in common) or "default"
    return runs


def summarize_runs(runs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows in order of first appearance: mean, sample std (ddof=1; 0 for a single seed), n."""
    columns = list(runs[0]["metrics"].keys())
    rows: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        rows.setdefault(run["config"], []).append(run["metrics"])
    table = []
    for config, values in rows.items():
        stats = {}
        for c in columns:
            v = np.asarray([m[c] for m in values if c in m], dtype=np.float64)
            stats[c] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        table.append({"config": config, "n": len(values), "stats": stats})
    return columns, table


def to_markdown(columns: list[str], table: list[dict[str, Any]]) -> str:
    head = "| configuration | seeds | " + " | ".join(columns) + " |"
    rule = "|---|---:|" + "---:|" * len(columns)
    lines = [head, rule]
    for row in table:
        cells = [f"{row['stats'][c][0]:.2f} ± {row['stats'][c][1]:.2f}" for c in columns]
        lines.append(f"| {row['config']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(multirun_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write report.md and report.csv (default: into the multirun directory) and print the table."""
    runs = collect_runs(multirun_dir)
    columns, table = summarize_runs(runs)
    out = Path(output_dir or multirun_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(columns, table)
    (out / "report.md").write_text(markdown)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "seeds"] + [f"{c} {s}" for c in columns for s in ("mean", "std")])
        for row in table:
            writer.writerow([row["config"], row["n"]] + [x for c in columns for x in row["stats"][c]])
    print(markdown)
    return {"markdown": markdown, "columns": columns, "rows": table, "runs": runs}
