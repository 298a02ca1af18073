"""Multirun outputs -> a paper-style ablation table (rows = configurations, mean ± std over seeds)."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from issf.utils.commands import override_arg
from issf.utils.io import atomic_write

log = logging.getLogger(__name__)

SEED_KEYS = ("seed",)
# overrides that say how a job was run, not what it computes (a job finished with ckpt_path= stays
# in its configuration's row)
RUN_KEYS = ("ckpt_path", "resume_changes", "allow_other_features", "print_config")
CURVE_METRICS = ("AVG(0.1:0.7)", "AVG")  # the first one a run logged is the curve's metric
# the test split evaluated during fitting: logged as test_curve/* when the best checkpoint is
# selected on held-out validation videos, else as val/* (the test split is then the selection split)
CURVE_TAGS = ("test_curve", "val")
# the best checkpoint's test, by the split it was selected on (issf.train.module)
SELECTED = {"test_val_selected": "best checkpoint selected on validation videos held out from the training split",
            "test_best_on_test": "best checkpoint selected on the test split itself (optimistic, as the released code)"}


def _job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def read_metrics(path: Path) -> dict[str, Any] | None:
    """A job's metrics.json, or None with a warning naming the file when it is damaged (truncated by
    a kill, not JSON): the job then counts as unfinished."""
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        log.warning(f"{path}: damaged metrics file ({type(err).__name__}: {err}); job skipped")
        return None
    if not isinstance(metrics, dict):
        log.warning(f"{path}: damaged metrics file (not a JSON object); job skipped")
        return None
    return metrics


def collect_runs(multirun_dir: str | os.PathLike, split: str = "test") -> list[dict[str, Any]]:
    """One record per finished job: its configuration key (overrides without the seed and without
    the keys of a resume, ``RUN_KEYS``), seed and metrics. A damaged metrics.json is named in a
    warning and skipped."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"multirun directory not found: {root}")
    runs = []
    for metrics_path in sorted(root.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        overrides = _job_overrides(metrics_path.parent)
        seed = next((o.split("=", 1)[1] for o in overrides if _key(o) in SEED_KEYS), None)
        key = " ".join(o for o in overrides if _key(o) not in SEED_KEYS + RUN_KEYS) or "default"
        metrics = read_metrics(metrics_path)
        if metrics is None:
            continue
        if split not in metrics:
            raise KeyError(f"{metrics_path}: no '{split}' entry (keys: {sorted(metrics)})")
        runs.append({"config": key, "seed": seed, "job": metrics_path.parent.name, "metrics": metrics[split],
                     "selected": {tag: metrics[tag] for tag in SELECTED if tag in metrics},
                     "curve": read_curve(metrics_path.parent / "csv" / "metrics.csv")})
    if not runs:
        raise FileNotFoundError(f"{root}: no */metrics.json found (is this a multirun directory?)")
    # overrides shared by every job (e.g. sweep=ablation) do not name a configuration
    common = set.intersection(*(set(r["config"].split()) for r in runs))
    for r in runs:
        r["config"] = " ".join(o for o in r["config"].split() if o not in common) or "default"
    return runs


def read_curve(csv_path: Path) -> dict[int, float]:
    """Test curve {epochs trained: value} of the first of ``CURVE_METRICS`` in a run's CSV log: the
    test split's evaluations during fitting (``CURVE_TAGS``); empty when the run has no CSV log or
    never evaluated."""
    if not csv_path.exists():
        return {}
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for tag in CURVE_TAGS:
        for name in CURVE_METRICS:
            column = f"{tag}/{name}"
            points = {int(r["epoch"]) + 1: float(r[column]) for r in rows if r.get(column) not in (None, "")}
            if points:
                return points
    return {}


def summarize_curves(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: the last and the best evaluation (mean, sample std over seeds) and the
    seed-mean curve, its best epoch and how much it loses from its best evaluation to its last."""
    by_config: dict[str, list[dict[int, float]]] = {}
    for run in runs:
        if run["curve"]:
            by_config.setdefault(run["config"], []).append(run["curve"])
    rows = []
    for config, curves in by_config.items():
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        if not epochs:
            continue
        values = np.asarray([[c[e] for e in epochs] for c in curves], dtype=np.float64)
        mean_curve = values.mean(0)
        ddof = 1 if len(curves) > 1 else 0
        best = int(mean_curve.argmax())
        rows.append({
            "config": config, "n": len(curves), "epochs": epochs, "mean_curve": mean_curve.tolist(),  # std 0 for n=1
            "last": (float(values[:, -1].mean()), float(values[:, -1].std(ddof=ddof))),
            "best": (float(values.max(1).mean()), float(values.max(1).std(ddof=ddof))),
            "curve_best_epoch": epochs[best], "curve_drop": float(mean_curve[best] - mean_curve[-1]),
        })
    return rows


def curves_to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| configuration | seeds | last evaluation | best of evaluations | seed-mean curve: best (epoch) "
             "| seed-mean curve: best - last | seed-mean curve |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        curve = " ".join(f"{v:.1f}" for v in r["mean_curve"])
        best = max(r["mean_curve"])
        lines.append(f"| {r['config']} | {r['n']} | {_mean_std(r['last'], r['n'])} "
                     f"| {_mean_std(r['best'], r['n'])} | {best:.2f} ({r['curve_best_epoch']}) "
                     f"| {r['curve_drop']:.2f} | {curve} |")
    return "\n".join(lines) + "\n"


def summarize_runs(runs: list[dict[str, Any]], tag: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows in order of first appearance: mean, sample std (ddof=1; 0 for a single seed), n; of the
    last weights' test, or (``tag``, a key of ``SELECTED``) of the best checkpoint's test."""
    figures = [(run["config"], run["metrics"] if tag is None else run["selected"][tag])
               for run in runs if tag is None or tag in run["selected"]]
    columns = list(figures[0][1].keys())
    rows: dict[str, list[dict[str, float]]] = {}
    for config, metrics in figures:
        rows.setdefault(config, []).append(metrics)
    table = []
    for config, values in rows.items():
        stats = {}
        for c in columns:
            v = np.asarray([m[c] for m in values if c in m], dtype=np.float64)
            stats[c] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        table.append({"config": config, "n": len(values), "stats": stats})
    return columns, table


def _mean_std(stats: tuple[float, float], n: int) -> str:
    """``mean ± std``; a single seed has no spread: ``mean ± –`` (never a made-up ``± 0.00``)."""
    return f"{stats[0]:.2f} ± –" if n < 2 else f"{stats[0]:.2f} ± {stats[1]:.2f}"


def to_markdown(columns: list[str], table: list[dict[str, Any]]) -> str:
    head = "| configuration | seeds | " + " | ".join(columns) + " |"
    rule = "|---|---:|" + "---:|" * len(columns)
    lines = [head, rule]
    for row in table:
        cells = [_mean_std(row["stats"][c], row["n"]) for c in columns]
        lines.append(f"| {row['config']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def missing_jobs(multirun_dir: str | os.PathLike, jobs: list[list[str]], command: str = "python run.py") -> list[str]:
    """One line per job of the sweep (``jobs[i]``: job ``i``'s overrides, from multirun.yaml) that
    has no readable metrics.json: whether it never started or stopped (and at which epoch), and the
    exact command that runs or resumes it into its own directory."""
    import shlex

    root = Path(multirun_dir)
    lines = []
    for number, overrides in enumerate(jobs):
        job = root / str(number)
        metrics = job / "metrics.json"
        if metrics.is_file() and read_metrics(metrics) is not None:
            continue
        args = " ".join(shlex.quote(o) for o in overrides if _key(o) not in RUN_KEYS)
        last = job / "checkpoints" / "last.ckpt"
        if last.is_file():
            state, extra = "unfinished (last.ckpt written)", override_arg("ckpt_path", str(last))
        else:
            state = "unfinished (no checkpoint)" if job.is_dir() else "never started"
            extra = override_arg("hydra.run.dir", str(job))
        lines.append(f"job {number} ({args or 'default'}): {state}; run: {command} {args} {extra}".replace("  ", " "))
    return lines


def write_report(multirun_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                 jobs: list[list[str]] | None = None) -> dict[str, Any]:
    """Write report.md and report.csv (default: into the multirun directory) and print the table.
    ``jobs`` (each job's overrides, from the sweep's multirun.yaml): the jobs without metrics are
    listed, with the command to run each, under the table and in the returned ``missing``."""
    missing = missing_jobs(multirun_dir, jobs or [])
    for line in missing:
        log.warning(line)
    try:
        runs = collect_runs(multirun_dir)
    except FileNotFoundError as err:
        if missing:
            raise FileNotFoundError(f"{err}\n" + "\n".join(missing)) from None
        raise
    columns, table = summarize_runs(runs)
    out = Path(output_dir or multirun_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = "Test of the last weights:\n\n" + to_markdown(columns, table)
    if missing:
        markdown = (f"**{len(missing)} of {len(jobs or [])} jobs have no results** (the table covers the others):\n\n"
                    + "\n".join(f"* {line}" for line in missing) + "\n\n" + markdown)
    for tag, meaning in SELECTED.items():
        if any(tag in run["selected"] for run in runs):
            markdown += f"\nTest of the {meaning} (`{tag}`):\n\n" + to_markdown(*summarize_runs(runs, tag))
    curves = summarize_curves(runs)
    if curves:
        epochs = curves[0]["epochs"]
        markdown += (f"\nTest curve during fitting, {CURVE_METRICS[0]} (or AVG) at epochs {', '.join(map(str, epochs))}:"
                     "\n\n" + curves_to_markdown(curves))
    with atomic_write(out / "report.md", "w") as f:
        f.write(markdown)
    with atomic_write(out / "report.csv", "w") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "seeds"] + [f"{c} {s}" for c in columns for s in ("mean", "std")])
        for row in table:
            writer.writerow([row["config"], row["n"]] + [x if row["n"] > 1 or i == 0 else "" for c in columns
                                                          for i, x in enumerate(row["stats"][c])])
    log.info(markdown)
    return {"markdown": markdown, "columns": columns, "rows": table, "runs": runs, "curves": curves,
            "missing": missing}
