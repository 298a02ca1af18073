"""task=report on an incomplete sweep (issue #28, item 5): the jobs of multirun.yaml without results
are listed with the command to run each; n=1 has no "± 0.00"; a job finished with ckpt_path= stays in
its configuration's row; a damaged metrics.json is named and skipped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from issf.analysis.report import write_report
from issf.app.overrides import sweep_jobs


def sweep(tmp_path: Path) -> Path:
    """``python run.py -m experiment=smoke seed=1,2,3`` killed during job 1; job 0 finished, job 1
    has last.ckpt, job 2 never started."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"params": None},
                                               "overrides": {"task": ["experiment=smoke", "seed=1,2,3"]}}}),
                   tmp_path / "multirun.yaml")
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=smoke", "seed=1"]))
    (job / "metrics.json").write_text(json.dumps({"test": {"AVG": 10.0}}))
    (tmp_path / "1" / "checkpoints").mkdir(parents=True)
    (tmp_path / "1" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    return tmp_path


def test_sweep_jobs_expand_multirun_yaml_as_hydra_does(tmp_path):
    assert sweep_jobs(sweep(tmp_path)) == [["experiment=smoke", "seed=1"], ["experiment=smoke", "seed=2"],
                                           ["experiment=smoke", "seed=3"]]


def _command_of(md: str, job: int) -> dict:
    """The overrides (as Hydra parses them) of the command the report prints for ``job``: what a
    user gets by pasting it into a shell."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    line = next(x for x in md.splitlines() if f"job {job} (" in x)
    words = shlex.split(line.split("run: ", 1)[1])
    assert words[:2] == ["python", "run.py"]
    parsed = [OverridesParser.create().parse_override(w) for w in words[2:]]
    return {o.key_or_group: o.value() for o in parsed}


def test_report_lists_missing_jobs_with_their_commands_and_no_zero_spread(tmp_path, caplog):
    root = sweep(tmp_path / "my sweep")  # a space: the printed commands are quoted
    with caplog.at_level(logging.WARNING):
        report = write_report(root, jobs=sweep_jobs(root))
    md = (root / "report.md").read_text()
    assert "2 of 3 jobs have no results" in md
    assert "job 1 (experiment=smoke seed=2): unfinished (last.ckpt written); run: " in md
    assert "job 2 (experiment=smoke seed=3): never started; run: " in md
    assert _command_of(md, 1) == {"experiment": "smoke", "seed": 2, "ckpt_path": str(root / "1" / "checkpoints" / "last.ckpt")}
    assert _command_of(md, 2) == {"experiment": "smoke", "seed": 3, "hydra.run.dir": str(root / "2")}
    assert "± 0.00" not in md and "| default | 1 | 10.00 ± – |" in md
    assert len(report["missing"]) == 2 and "never started" in caplog.text


def test_a_resumed_job_stays_in_its_row_and_a_damaged_metrics_file_is_skipped(tmp_path, caplog):
    root = sweep(tmp_path)
    (root / "1" / ".hydra").mkdir()
    (root / "1" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["experiment=smoke", "seed=2", f"ckpt_path={root / '1' / 'checkpoints' / 'last.ckpt'}"]))
    (root / "1" / "metrics.json").write_text(json.dumps({"test": {"AVG": 14.0}}))
    (root / "2" / ".hydra").mkdir(parents=True)
    (root / "2" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=smoke", "seed=3"]))
    (root / "2" / "metrics.json").write_text('{"test": {"AV')  # truncated by a kill
    with caplog.at_level(logging.WARNING):
        report = write_report(root, jobs=sweep_jobs(root))
    assert [(r["config"], r["n"]) for r in report["rows"]] == [("default", 2)]  # one row (shared overrides name no configuration)
    assert f"{root / '2' / 'metrics.json'}: damaged metrics file" in caplog.text
    assert report["missing"] and report["missing"][0].startswith("job 2 (experiment=smoke seed=3)")
