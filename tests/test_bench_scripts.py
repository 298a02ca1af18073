"""The benchmark scripts import, run their smallest case, and append well-formed records."""

from __future__ import annotations

import datetime
import importlib
import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from bench import common, run_all

SCRIPTS = ["bench_metric", "bench_localize", "bench_data", "bench_train", "run_all"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports(name):
    assert callable(importlib.import_module(f"bench.{name}").main)


def check_header(entry: dict) -> None:
    datetime.datetime.fromisoformat(entry["date"])
    assert entry["machine"] and entry["command"]


def test_record_appends_concurrently(tmp_path):
    path = tmp_path / "results.json"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: common.record({"case": f"c{i}", "seconds": i}, path), range(40)))
    entries = json.loads(path.read_text())
    assert sorted(e["seconds"] for e in entries) == list(range(40))
    for entry in entries:
        check_header(entry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.json.lock"]


def test_bench_localize_quick_records(tmp_path, monkeypatch):
    from bench import bench_localize

    path = tmp_path / "results.json"
    monkeypatch.setattr(bench_localize, "record", partial(common.record, path=path))
    entries = bench_localize.main(["--quick"])
    saved = json.loads(path.read_text())
    assert len(saved) == len(entries) == 1
    check_header(saved[0])
    assert saved[0]["benchmark"] == "localize" and "20 videos" in saved[0]["case"]
    assert saved[0]["seconds"] > 0 and saved[0]["detections"] > 0


def test_summary_table():
    entries = [
        {"benchmark": "data", "case": "read", "value": 2.0e6, "unit": "snippets/s"},
        {"benchmark": "localize", "case": "synthetic", "seconds": 0.1},
        {"benchmark": "train_epoch", "case": "batched", "seconds_per_epoch": 12.5},
    ]
    lines = run_all.summary(entries).splitlines()
    assert len(lines) == 4
    assert "snippets/s" in lines[1] and "s/epoch" in lines[3] and "localize: synthetic" in lines[2]
