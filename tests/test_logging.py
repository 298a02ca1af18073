"""What a run logs: the last weights' test and the best checkpoint's test under distinct names in
every logger, agreeing with metrics.json; epochs counted the same way everywhere."""

from __future__ import annotations

import csv
import json

import pytest

import run
from tests.conftest import compose_cfg


@pytest.mark.slow
def test_last_and_best_figures_have_distinct_names_in_csv_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_cfg(tmp_path, "experiment=smoke", "logger=tensorboard", "trainer.check_val_every_n_epoch=1")
    out = tmp_path / "out"
    run.task_train(cfg, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] != metrics["test_best_ckpt"] or metrics["val_best"]["epoch"] == metrics["epochs"] - 1

    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv", newline="")))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("test", "test_best_ckpt"):
        key = f"{tag}/AVG(0.1:0.7)"
        logged = [float(r[key]) for r in rows if r.get(key)]
        assert logged == pytest.approx([metrics[tag]["AVG(0.1:0.7)"]], abs=1e-4), key
        assert [e.value for e in events.Scalars(key)] == pytest.approx(logged, abs=1e-4), key
    # the best epoch of metrics.json is the epoch whose validation row has the best score
    val = {int(r["epoch"]): float(r["val/AVG"]) for r in rows if r.get("val/AVG")}
    assert max(val, key=val.get) == metrics["val_best"]["epoch"]
    assert val[metrics["val_best"]["epoch"]] == pytest.approx(metrics["val_best"]["score"], abs=1e-4)
    assert (out / "checkpoints" / f"epoch_{metrics['val_best']['epoch']:03d}.ckpt").is_file()
