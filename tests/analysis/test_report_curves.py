"""task=report's curve section on a hand-made sweep: best of evaluations per run (then over seeds),
last evaluation, seed-mean curve, its best epoch and drop, and the epoch labels (epochs trained)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from issf.analysis.report import collect_runs, read_curve, summarize_curves, write_report

EPOCHS = (4, 9, 14)  # 0-based epochs of the evaluations in the CSV log: 5, 10 and 15 epochs trained
CURVES = {
    ("+ablation=base", "1"): [10.0, 30.0, 20.0],
    ("+ablation=base", "2"): [25.0, 15.0, 5.0],
    ("+ablation=full", "1"): [40.0, 50.0, 45.0],
    ("+ablation=full", "2"): [42.0, 44.0, 48.0],
    ("+ablation=solo", "1"): [1.0, 3.0, 2.0],
}


def write_run(job: Path, overrides: list[str], curve: list[float]) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "metrics.json").write_text(json.dumps({"test": {"AVG": curve[-1]}}))
    (job / "csv").mkdir()
    columns = ["epoch", "step", "train/loss_total", "val/AVG(0.1:0.7)", "test_curve/AVG(0.1:0.7)"]
    with open(job / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for epoch in range(EPOCHS[-1] + 1):
            writer.writerow({"epoch": epoch, "step": epoch * 3, "train/loss_total": 1.0 / (epoch + 1)})
            if epoch in EPOCHS:  # the selection split (val) differs from the test curve
                value = curve[EPOCHS.index(epoch)]
                writer.writerow({"epoch": epoch, "step": epoch * 3, "val/AVG(0.1:0.7)": 100 - value,
                                 "test_curve/AVG(0.1:0.7)": value})


def fake_sweep(tmp_path: Path) -> Path:
    for num, ((ablation, seed), curve) in enumerate(CURVES.items()):
        write_run(tmp_path / str(num), ["sweep=x", ablation, f"seed={seed}"], curve)
    return tmp_path


def test_the_curve_is_labelled_by_epochs_trained_and_reads_the_test_split(tmp_path):
    write_run(tmp_path / "0", ["seed=1"], [1.0, 2.0, 3.0])
    assert read_curve(tmp_path / "0" / "csv" / "metrics.csv") == {5: 1.0, 10: 2.0, 15: 3.0}


def test_best_of_evaluations_is_each_runs_best_then_the_mean_over_seeds(tmp_path):
    rows = {r["config"]: r for r in summarize_curves(collect_runs(fake_sweep(tmp_path)))}
    assert list(rows) == ["+ablation=base", "+ablation=full", "+ablation=solo"]
    base, full, solo = rows["+ablation=base"], rows["+ablation=full"], rows["+ablation=solo"]
    assert base["epochs"] == [5, 10, 15] and base["n"] == 2
    # per seed: best 30 and 25 (not the best per epoch over seeds: 25, 30, 20)
    assert base["best"] == pytest.approx((27.5, np.std([30, 25], ddof=1)))
    assert base["last"] == pytest.approx((12.5, np.std([20, 5], ddof=1)))
    assert base["mean_curve"] == pytest.approx([17.5, 22.5, 12.5])
    assert base["curve_best_epoch"] == 10 and base["curve_drop"] == pytest.approx(10.0)
    assert full["best"] == pytest.approx((49.0, np.std([50, 48], ddof=1)))
    assert full["last"] == pytest.approx((46.5, np.std([45, 48], ddof=1)))
    assert full["curve_best_epoch"] == 10 and full["curve_drop"] == pytest.approx(0.5)
    assert solo["best"] == (3.0, 0.0) and solo["last"] == (2.0, 0.0) and solo["n"] == 1


def test_only_epochs_every_seed_evaluated_enter_the_curve(tmp_path):
    sweep = fake_sweep(tmp_path)
    path = sweep / "1" / "csv" / "metrics.csv"  # base, seed 2: its last evaluation is missing
    rows = list(csv.DictReader(open(path, newline="")))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if not (r["epoch"] == "14" and r["test_curve/AVG(0.1:0.7)"]))
    base = {r["config"]: r for r in summarize_curves(collect_runs(sweep))}["+ablation=base"]
    assert base["epochs"] == [5, 10] and base["mean_curve"] == pytest.approx([17.5, 22.5])
    assert base["best"][0] == pytest.approx(27.5) and base["last"][0] == pytest.approx(22.5)


def test_the_report_prints_the_curve_section(tmp_path):
    report = write_report(fake_sweep(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "AVG(0.1:0.7) (or AVG) at epochs 5, 10, 15:" in md
    assert "| +ablation=base | 2 | 12.50 ± 10.61 | 27.50 ± 3.54 | 22.50 (10) | 10.00 | 17.5 22.5 12.5 |" in md
    assert "| +ablation=solo | 1 | 2.00 ± – | 3.00 ± – | 3.00 (10) | 1.00 | 1.0 3.0 2.0 |" in md  # n=1: no spread
    assert [r["config"] for r in report["curves"]] == ["+ablation=base", "+ablation=full", "+ablation=solo"]
