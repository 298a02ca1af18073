"""W&B offline: the logger config never goes online by default, and a smoke run's offline run
directory holds the scalar metrics, the diagnostic images and the detections table (and, with
logger.wandb.log_model=all, the best and the last checkpoint as artifacts)."""

from __future__ import annotations

import base64
import faulthandler
import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from issf.app import overrides, tasks
from issf.app.build import validate_config
from issf.data.h5 import FeatureFile
from issf.eval.detections import load_detections
from issf.train.diagnostics import DETECTION_COLUMNS
from tests.conftest import compose_cfg
from tests.markers import requires_package

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def wandb_records(path: Path) -> Iterator:
    """Protobuf records of a ``.wandb`` file: a 7-byte ``:W&B`` header, then a LevelDB-style log
    of 32 KiB blocks whose records carry a 7-byte header (crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        body, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        chunks = body if kind in (1, 2) else chunks + body  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            yield record


def history(path: Path) -> list[dict]:
    """Every ``wandb.log`` row of a run file as {key: value}."""
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_logger_config_is_offline_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("ISSF_WANDB_OFFLINE", raising=False)
    cfg = compose_cfg(tmp_path, "logger=wandb")
    assert cfg.logger.wandb.offline is True
    assert cfg.logger.wandb.log_model is False  # model upload would need the network
    assert "csv" in cfg.logger
    monkeypatch.setenv("ISSF_WANDB_OFFLINE", "false")
    assert compose_cfg(tmp_path, "logger=wandb").logger.wandb.offline is False


@pytest.mark.slow
@requires_package("wandb")
def test_offline_run_holds_metrics_images_and_tables(tmp_path, offline_env):
    cfg = compose_cfg(tmp_path, "experiment=smoke", "logger=wandb", "trainer.max_epochs=3",
                      "trainer.check_val_every_n_epoch=1", "callbacks.plots.num_videos=2")
    out = tmp_path / "out"
    faulthandler.dump_traceback_later(240, exit=True)  # never hang the suite on a blocked W&B
    try:
        metrics = tasks.task_train(cfg, out)
    finally:
        import wandb

        tasks.finish_wandb()
        wandb.teardown()  # stop the W&B service so later tests (fork-based DDP) start clean
        faulthandler.cancel_dump_traceback_later()

    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    run_dir = runs[0]
    (log_file,) = run_dir.glob("run-*.wandb")
    rows = history(log_file)
    keys = set().union(*rows)

    # scalars: per-epoch validation mAP at every tIoU, losses, and both test evaluations
    assert {"val/AVG", "val/mAP@0.1", "val/mAP@0.7", "test/mAP@0.5", "test/AVG(0.1:0.7)", "train/loss_total",
            "trainer/global_step", "epoch"} <= keys
    assert len([r for r in rows if "val/AVG" in r]) == 3
    # the last weights' test and the best checkpoint's test under distinct names, as in metrics.json
    for tag in ("test", "test_best_on_test"):
        logged = [r[f"{tag}/AVG(0.1:0.7)"] for r in rows if f"{tag}/AVG(0.1:0.7)" in r]
        assert logged == pytest.approx([metrics[tag]["AVG(0.1:0.7)"]], abs=1e-4), tag

    # images: one per fixed video and validation, plus the test figures
    image_rows = [r for r in rows if any(k.startswith("plots/val/") for k in r)]
    assert len(image_rows) == 3
    videos = {k.split("/")[2] for k in keys if k.startswith("plots/val/")}
    assert len(videos) == 2
    for name in [*videos, "per_class_ap", "errors", "map_curves"]:
        assert f"plots/test/{name}/_type" in keys, name
        assert f"plots/test_best_on_test/{name}/_type" in keys, name
    images = run_dir / "files" / "media" / "images" / "plots"
    assert len(list((images / "val").glob("*.png"))) == 3 * 2
    assert len(list((images / "test").glob("*.png"))) == 2 + 3
    for row in image_rows:
        for key, value in row.items():
            if key.endswith("/path"):
                png = run_dir / "files" / value
                assert png.read_bytes()[:8] == PNG_MAGIC, png

    # tables: final detections (as in detections.json) and the mAP summary
    (det_table,) = (run_dir / "files" / "media" / "table" / "test").glob("detections_*.table.json")
    table = json.loads(det_table.read_text())
    assert table["columns"] == DETECTION_COLUMNS
    gt = FeatureFile(tmp_path / "data" / "synthetic_smoke.h5").ground_truth("test")
    saved = load_detections(out / "detections.json", gt)
    assert len(table["data"]) == len(saved) > 0
    scores = [r[4] for r in table["data"]]
    assert scores == sorted(scores, reverse=True)
    assert {r[0] for r in table["data"]} <= set(gt.video_ids)
    (summary_table,) = (run_dir / "files" / "media" / "table" / "test").glob("summary_*.table.json")
    summary = json.loads(summary_table.read_text())
    row = dict(zip(summary["columns"], summary["data"][0]))
    assert row["row"] == "test"
    assert row["mAP@0.5"] == pytest.approx(metrics["test"]["mAP@0.5"], abs=1e-4)

    # the module's hyperparameters are in the run config
    config_keys = {i.key for r in wandb_records(log_file) if r.WhichOneof("record_type") == "config"
                   for i in r.config.update}
    assert {"num_classes", "network"} <= config_keys


def test_wandb_run_name_tags_and_flat_config(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, "experiment=thumos_full", "+ablation=full", "seed=3", "logger=wandb")
    monkeypatch.setattr(overrides, "hydra_choices", lambda: {"experiment": "thumos_full", "ablation": "full"})
    name, tags = overrides.wandb_identity(cfg, ["experiment=thumos_full", "+ablation=full", "seed=3",
                                          f"paths.root_dir={tmp_path}", "~callbacks.progress_bar"])
    assert name == "thumos_full-ablation=full-seed=3"
    assert {"seed=3", "ablation=full"} <= set(tags) and set(cfg.tags) <= set(tags)
    flat = overrides.flat_config(cfg)
    assert flat["seed"] == 3 and flat["experiment"] == "thumos_full" and flat["ablation"] == "full"
    assert flat["model.network.memory_read"] == "class0" and flat["data.evaluation.protocol"] == "wtalc"
    assert not any(isinstance(v, dict) for v in flat.values())
    assert not any(k.startswith(("data.synthetic", "data.prepare", "paths", "hydra")) for k in flat)


def test_checkpoint_artifacts_need_a_run_that_is_not_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("ISSF_WANDB_OFFLINE", raising=False)
    with pytest.raises(ValueError, match=r"logger\.wandb\.log_model=all: .* add logger\.wandb\.offline=false"):
        validate_config(compose_cfg(tmp_path, "logger=wandb", "logger.wandb.log_model=all"))
    validate_config(compose_cfg(tmp_path, "logger=wandb", "logger.wandb.log_model=all", "logger.wandb.offline=false"))


def md5_base64(path: Path) -> str:
    """The digest W&B gives a file of an artifact manifest."""
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.mark.slow
@requires_package("wandb")
def test_log_model_all_keeps_the_best_and_the_last_checkpoint_as_artifacts(tmp_path, offline_env):
    """WANDB_MODE=offline (offline_env) with logger.wandb.offline=false: the artifacts are recorded
    in the offline run, to be uploaded by `wandb sync`."""
    cfg = compose_cfg(tmp_path, "experiment=smoke", "logger=wandb", "logger.wandb.log_model=all",
                      "logger.wandb.offline=false", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1",
                      "callbacks.plots=null")
    validate_config(cfg)
    out = tmp_path / "out"
    faulthandler.dump_traceback_later(240, exit=True)  # never hang the suite on a blocked W&B
    try:
        tasks.task_train(cfg, out)
    finally:
        import wandb

        tasks.finish_wandb()
        wandb.teardown()
        faulthandler.cancel_dump_traceback_later()

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (log_file,) = run_dir.glob("run-*.wandb")
    latest = {}  # checkpoint file -> the digest of its last uploaded version
    for record in wandb_records(log_file):
        if record.WhichOneof("record_type") != "artifact":
            continue
        artifact = record.artifact
        assert artifact.type == "model" and artifact.name == f"model-{run_dir.name.rsplit('-', 1)[1]}"
        (entry,) = artifact.manifest.contents
        latest[json.loads(artifact.metadata)["original_filename"]] = entry.digest
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints  # the best one and the last one
    for name in checkpoints:
        assert latest.get(name) == md5_base64(out / "checkpoints" / name), name
