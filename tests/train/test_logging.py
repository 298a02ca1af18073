"""What a run logs: the last weights' test and the best checkpoint's test under distinct names in
every logger, agreeing with metrics.json; epochs counted the same way everywhere."""

from __future__ import annotations

import csv
import json

import pytest

from issf.app import tasks
from tests.conftest import compose_cfg
from tests.markers import requires_package


@pytest.mark.slow
@requires_package("tensorboard")
def test_last_and_best_figures_have_distinct_names_in_csv_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_cfg(tmp_path, "experiment=smoke", "logger=tensorboard", "trainer.check_val_every_n_epoch=1")
    out = tmp_path / "out"
    tasks.task_train(cfg, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] != metrics["test_best_on_test"] or metrics["val_best"]["epoch"] == metrics["epochs"] - 1

    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv", newline="")))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("test", "test_best_on_test"):
        key = f"{tag}/AVG(0.1:0.7)"
        logged = [float(r[key]) for r in rows if r.get(key)]
        assert logged == pytest.approx([metrics[tag]["AVG(0.1:0.7)"]], abs=1e-4), key
        assert [e.value for e in events.Scalars(key)] == pytest.approx(logged, abs=1e-4), key
    # the best epoch of metrics.json is the epoch whose validation row has the best score
    val = {int(r["epoch"]): float(r["val/AVG"]) for r in rows if r.get("val/AVG")}
    assert max(val, key=val.get) == metrics["val_best"]["epoch"]
    assert val[metrics["val_best"]["epoch"]] == pytest.approx(metrics["val_best"]["score"], abs=1e-4)
    assert (out / "checkpoints" / f"epoch_{metrics['val_best']['epoch']:03d}.ckpt").is_file()


@pytest.mark.slow
@requires_package("wandb")
def test_ddp_cpu_logs_like_a_single_process(tmp_path, offline_env):
    """trainer=ddp_cpu (two forked ranks): the same CSV columns and rows, the same metrics.json keys
    and epoch count as one process, and one non-empty W&B run with training, validation and both
    tests in it."""
    import faulthandler

    import wandb

    from tests.app.test_wandb import history

    outputs = {}
    faulthandler.dump_traceback_later(300, exit=True)  # never hang the suite on a blocked rank
    try:
        for name, extra in (("single", []), ("ddp", ["trainer=ddp_cpu", "logger=wandb"])):
            out = tmp_path / name
            cfg = compose_cfg(tmp_path, "experiment=smoke", "trainer.max_epochs=4", f"paths.output_dir={out}", *extra)
            tasks.task_train(cfg, out)
            tasks.finish_wandb()
            outputs[name] = out
    finally:
        wandb.teardown()
        faulthandler.cancel_dump_traceback_later()
    single, ddp = (json.loads((outputs[n] / "metrics.json").read_text()) for n in ("single", "ddp"))
    assert sorted(ddp) == sorted(single) and ddp["epochs"] == single["epochs"] == 4
    assert sorted(ddp["val_best"]) == sorted(single["val_best"])
    rows = {n: list(csv.DictReader(open(outputs[n] / "csv" / "metrics.csv", newline=""))) for n in outputs}
    assert list(rows["ddp"][0]) == list(rows["single"][0]) and len(rows["ddp"]) == len(rows["single"])
    assert [r["epoch"] for r in rows["ddp"]] == [r["epoch"] for r in rows["single"]]

    runs = sorted((outputs["ddp"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    (log_file,) = runs[0].glob("run-*.wandb")
    keys = set().union(*history(log_file))
    assert {"train/loss_total", "val/AVG", "test/AVG", "test_best_on_test/AVG"} <= keys
