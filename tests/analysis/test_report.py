"""Ablation report: a tiny real sweep (2 configurations x 2 seeds) and the table against its runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from issf.analysis.report import collect_runs, read_curve, summarize_runs, write_report

ROOT = Path(__file__).resolve().parents[2]


def fake_sweep(tmp_path: Path) -> Path:
    values = {("+ablation=base", "1"): 10.0, ("+ablation=base", "2"): 14.0, ("+ablation=full", "1"): 30.0,
              ("+ablation=full", "2"): 31.0}
    for num, ((ablation, seed), avg) in enumerate(values.items()):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["sweep=x", ablation, f"seed={seed}"]))
        (job / "metrics.json").write_text(json.dumps({"test": {"mAP@0.5": avg / 2, "AVG": avg}}))
    return tmp_path


def test_table_is_mean_and_sample_std_over_seeds(tmp_path):
    report = write_report(fake_sweep(tmp_path))
    rows = {r["config"]: r for r in report["rows"]}
    assert set(rows) == {"+ablation=base", "+ablation=full"}
    assert rows["+ablation=base"]["n"] == 2
    assert rows["+ablation=base"]["stats"]["AVG"] == pytest.approx((12.0, np.std([10, 14], ddof=1)))
    assert rows["+ablation=full"]["stats"]["mAP@0.5"] == pytest.approx((15.25, np.std([15, 15.5], ddof=1)))
    md = (tmp_path / "report.md").read_text()
    assert "| +ablation=base | 2 | 6.00 ± 1.41 | 12.00 ± 2.83 |" in md
    assert "test_val_selected" not in md and "test_best_on_test" not in md
    assert (tmp_path / "report.csv").read_text().count("\n") == 3


def test_selected_checkpoints_are_tabled_apart_and_named(tmp_path):
    sweep = fake_sweep(tmp_path)
    for job in sweep.iterdir():
        metrics = json.loads((job / "metrics.json").read_text())
        metrics["test_val_selected"] = {k: v + 1.0 for k, v in metrics["test"].items()}
        (job / "metrics.json").write_text(json.dumps(metrics))
    report = write_report(sweep)
    md = (sweep / "report.md").read_text()
    assert "selected on validation" in md and "(`test_val_selected`)" in md and "test_best_on_test" not in md
    tail = md.split("test_val_selected")[1]
    assert "| +ablation=base | 2 | 7.00 ± 1.41 | 13.00 ± 2.83 |" in tail
    assert report["rows"][0]["stats"]["AVG"][0] == pytest.approx(12.0)  # the main table stays the last weights'


def test_curve_is_the_test_split_during_fitting(tmp_path):
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "metrics.csv").write_text("epoch,val/AVG(0.1:0.7),test_curve/AVG(0.1:0.7)\n4,90.0,40.0\n9,95.0,42.0\n")
    assert read_curve(csv_dir / "metrics.csv") == {5: 40.0, 10: 42.0}
    (csv_dir / "metrics.csv").write_text("epoch,val/AVG(0.1:0.7)\n4,30.0\n9,35.0\n")  # no held-out videos: val is test
    assert read_curve(csv_dir / "metrics.csv") == {5: 30.0, 10: 35.0}


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*/metrics.json"):
        collect_runs(tmp_path)


@pytest.mark.slow
def test_tiny_real_sweep_and_report(tmp_path):
    env = {**os.environ, "ISSF_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "run.py", "-m", "experiment=smoke", "+ablation=base,full", "seed=1,2",
           "trainer.max_epochs=2", "callbacks.plots=null", f"hydra.sweep.dir={sweep}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = subprocess.run([sys.executable, "run.py", "task=report", f"dir={sweep}", "logger=none"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr[-3000:]
    runs = collect_runs(sweep)
    assert len(runs) == 4
    columns, table = summarize_runs(runs)
    assert [r["config"] for r in table] == ["+ablation=base", "+ablation=full"]
    for row in table:
        avgs = [json.loads((sweep / r["job"] / "metrics.json").read_text())["test"]["AVG(0.1:0.7)"]
                for r in runs if r["config"] == row["config"]]
        assert row["stats"]["AVG(0.1:0.7)"] == pytest.approx((np.mean(avgs), np.std(avgs, ddof=1)))
    md = (sweep / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "Test of the last weights:" and lines[2].startswith("| configuration | seeds | mAP@0.1")
    assert "+ablation=full | 2 |" in md
