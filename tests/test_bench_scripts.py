"""The benchmark scripts import, run their smallest case, and append well-formed records."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from bench import common, run_all


class Parsed(Exception):
    """Raised in place of running a benchmark once its arguments are parsed."""


@pytest.mark.parametrize("command", run_all.BENCHMARKS + [["bench/run_all.py"], ["bench/mutation.py"]],
                         ids=lambda c: Path(c[0]).stem)
def test_scripts_accept_the_arguments_run_all_passes(command, monkeypatch):
    """Every script exists and its main() parses the arguments run_all.py gives it plus --quick
    (run_all's contract), without running the benchmark."""
    script, *args = command
    assert (run_all.ROOT / script).is_file()
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise Parsed(original(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    module = importlib.import_module(f"bench.{Path(script).stem}")
    extra = ["--list"] if script.endswith("mutation.py") else ["--quick"]
    with pytest.raises(Parsed) as parsed:
        module.main([*args, *extra])
    namespace = vars(parsed.value.args[0])
    assert namespace.get("quick", namespace.get("list")) is True
    for flag, value in zip(args[::2], args[1::2]):
        assert str(namespace[flag.lstrip("-").replace("-", "_")]) == value


def test_mutations_are_well_formed():
    from bench import mutation

    names = [m.name for m in mutation.MUTATIONS]
    assert len(names) == len(set(names)) >= 27
    for m in mutation.MUTATIONS:
        assert m.old and m.old != m.new and m.tests, m.name
        assert all((run_all.ROOT / t).is_file() for t in m.tests), m.name
        assert (run_all.ROOT / m.file).is_file(), m.name
        # the bug still has a place to go: a refactor that moves the code must move the mutation too
        assert (run_all.ROOT / m.file).read_text().count(m.old) == 1, f"{m.name}: old text not found once in {m.file}"


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
    assert len(saved) == len(entries) == 2
    check_header(saved[0])
    assert saved[0]["benchmark"] == "localize" and "20 videos" in saved[0]["case"]
    assert saved[0]["seconds"] > 0 and saved[0]["detections"] > 0
    assert saved[1]["benchmark"] == "rescore_predictions" and "20 videos" in saved[1]["case"]
    assert saved[1]["seconds"] > 0 and saved[1]["predictions_bytes"] > 20 * 20 * 100


def test_summary_table():
    entries = [
        {"benchmark": "data", "case": "read", "value": 2.0e6, "unit": "snippets/s"},
        {"benchmark": "localize", "case": "synthetic", "seconds": 0.1},
        {"benchmark": "train_epoch", "case": "batched", "seconds_per_epoch": 12.5},
    ]
    lines = run_all.summary(entries).splitlines()
    assert len(lines) == 4
    assert "snippets/s" in lines[1] and "s/epoch" in lines[3] and "localize: synthetic" in lines[2]


def test_bench_anet_quick_records(tmp_path, monkeypatch):
    from bench import bench_anet

    path = tmp_path / "results.json"
    monkeypatch.setattr(bench_anet, "record", partial(common.record, path=path))
    bench_anet.main(["--quick"])
    evaluation, training = json.loads(path.read_text())
    check_header(evaluation)
    assert evaluation["benchmark"] == "anet_eval" and evaluation["videos"] == 200
    assert evaluation["detections"] > 0 and 0 < evaluation["AVG(0.5:0.95)"] <= 100
    assert 1 <= evaluation["classes_localized_per_video"] < 20  # relative selection, not every class
    assert training["benchmark"] == "anet_train" and training["snippets_per_second"] > 0
    assert run_all.value_unit(training) == (training["snippets_per_second"], "snippets/s")


def test_a_slowed_case_is_flagged_against_the_best_earlier_record(tmp_path, capsys):
    """The regression gate: a record more than 10% worse than the best earlier record of the same
    case on the same machine is printed; other machines, other cases and small noise are not."""
    path = tmp_path / "results.json"
    base = {"benchmark": "train_epoch", "case": "thumos_scale_batched_B10", "device": "cpu", "threads": 1}
    for seconds in (26.0, 25.0, 27.0):
        assert common.record({**base, "cpu_seconds_per_epoch": seconds, "snippets_per_second": 2600 / seconds},
                             path) == []
    assert common.record({**base, "cpu_seconds_per_epoch": 26.5}, path) == []  # within 10% of 25
    slower = common.record({**base, "cpu_seconds_per_epoch": 44.4, "snippets_per_second": 2600 / 44.4}, path)
    assert len(slower) == 2 and "cpu_seconds_per_epoch 44.4 vs 25 (+78%" in slower[0]
    assert "snippets_per_second" in slower[1]
    assert "SLOWER" in capsys.readouterr().err
    assert common.record({**base, "case": "other", "cpu_seconds_per_epoch": 99.0}, path) == []  # a new case
    foreign = {**base, "cpu_seconds_per_epoch": 90.0, "machine": "another machine"}
    assert common.regressions(foreign, json.loads(path.read_text())) == []
    throughput = {"benchmark": "data", "case": "read", "unit": "MB/s"}
    history = [{**throughput, "value": 100.0, "machine": "m"}]
    assert common.regressions({**throughput, "value": 80.0, "machine": "m"}, history)  # throughput fell 20%
    assert not common.regressions({**throughput, "value": 120.0, "machine": "m"}, history)


def test_records_compare_across_kernel_builds_of_the_same_hardware_only():
    base = {"benchmark": "train_epoch", "case": "c", "cpu_seconds_per_epoch": 25.0,
            "machine": "vm | AMD EPYC | 2 cpus | Linux 6.18.44-fc-v857"}
    later = {**base, "cpu_seconds_per_epoch": 40.0, "machine": "vm2 | AMD EPYC | 2 cpus | Linux 6.18.44-fc-v1300"}
    other_cpu = {**later, "machine": "vm | Intel(R) Xeon(R) Processor | 2 cpus | Linux 6.18.44-fc-v657"}
    assert common.regressions(later, [base])  # the same processor in another session: compared
    assert common.regressions(other_cpu, [base]) == []  # another processor: never
