"""Predict once, evaluate many times: stored per-video test outputs re-scored without the network."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from issf.app import build, overrides, tasks
from issf.data.annotations import GroundTruth
from issf.eval.evaluator import EvaluationConfig
from issf.eval.predictions import (
    PredictionsError,
    collect,
    read_predictions,
    score_predictions,
    write_predictions,
)
from tests.conftest import compose_cfg


def small_case() -> tuple[GroundTruth, list]:
    gt = GroundTruth(["a", "b"], ["v0", "v1", "v2"], [6.4, 12.8, 3.2], [[1.0, 3.0], [2.0, 9.0]], [0, 1], [0, 1])
    rng = np.random.default_rng(0)
    cas = torch.from_numpy(rng.random((3, 20, 2)).astype(np.float32) * 0.2)
    rows = collect(torch.tensor([2, 0, 1]), torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), cas,
                   torch.tensor([5, 10, 20]), torch.tensor([1.0, 1.0, 1.0]))
    return gt, rows


def test_round_trip_sorted_by_video_with_the_run_settings(tmp_path):
    gt, rows = small_case()
    settings = {"protocol": "anet", "localization": {"nms_threshold": 0.3}}
    path = write_predictions(tmp_path / "p.h5", rows, gt, 0.64, settings, data={"name": "x"})
    preds = read_predictions(path)
    assert preds.video_index.tolist() == [0, 1, 2] and preds.video_ids == ["v0", "v1", "v2"]
    assert preds.offsets.tolist() == [0, 10, 30, 35] and preds.cas.dtype == np.float32
    np.testing.assert_array_equal(preds.video_cas(2), rows[0][2])  # video 2 came first in the batch
    assert preds.evaluation == settings and preds.data == {"name": "x"} and preds.class_names == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5"]  # written atomically, no temporary left
    result = score_predictions(preds, gt, EvaluationConfig(**settings))
    assert "cls_mAP" in result.summary and result.config.localization == {"nms_threshold": 0.3}
    assert set(result.detections.video.tolist()) <= {0, 1, 2}


def test_bad_predictions_files_are_named(tmp_path):
    gt, rows = small_case()
    with pytest.raises(PredictionsError, match="no such file"):
        read_predictions(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(PredictionsError, match=f"predictions file {tmp_path / 'junk.h5'}: not a predictions file"):
        read_predictions(tmp_path / "junk.h5")
    path = write_predictions(tmp_path / "p.h5", rows, gt, 0.64, {})
    other = GroundTruth(["a", "c"], gt.video_ids, gt.durations, gt.segments, gt.segment_video, gt.segment_label)
    with pytest.raises(PredictionsError, match="do not match the ground truth"):
        score_predictions(read_predictions(path), other, EvaluationConfig())
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(PredictionsError, match="schema version 99"):
        read_predictions(path)
    with pytest.raises(ValueError, match="predicted twice"):
        write_predictions(tmp_path / "q.h5", rows + rows[:1], gt, 0.64, {})


@pytest.mark.slow
def test_rescoring_stored_predictions_reproduces_the_run_and_honours_overrides(tmp_path):
    out = tmp_path / "train"
    tasks.task_train(compose_cfg(tmp_path, "experiment=smoke", f"paths.output_dir={out}"), out)
    logged = json.loads((out / "metrics.json").read_text())
    # metrics.json is computed from predictions.h5; the module's own evaluator logged the same figures
    with open(out / "csv" / "metrics.csv") as f:
        history = list(csv.DictReader(f))
    for tag in ("test", "test_best_on_test"):
        row = [r for r in history if r.get(f"{tag}/mAP@0.5")][-1]
        assert {k: float(row[f"{tag}/{k}"]) for k in logged[tag]} == pytest.approx(logged[tag], rel=1e-6, abs=1e-5), tag
    for tag, name in (("test", "predictions.h5"), ("test_best_on_test", "predictions_test_best_on_test.h5")):
        cfg = compose_cfg(tmp_path, "task=eval", f"predictions={out / name}")  # no experiment: the run's data
        again = tasks.task_eval(cfg, tmp_path / f"eval_{tag}")
        assert again["test"] == logged[tag], tag  # exactly
        assert again["test_baseline"] == logged[f"{tag}_baseline"] and again["test_per_class_ap"] == logged[f"{tag}_per_class_ap"]
    assert sorted(p.name for p in (tmp_path / "data").glob("*.h5")) == ["synthetic_smoke.h5"]

    override = "data.evaluation.localization.nms_threshold=0.1"
    cfg = compose_cfg(tmp_path, "task=eval", f"predictions={out / 'predictions.h5'}", override)
    changes = overrides.evaluation_overrides(cfg, [override])
    overrides.use_checkpoint_data(cfg, [override])  # an evaluation override keeps the run's data
    from issf.train.pipeline import evaluate_predictions

    rescored = evaluate_predictions(cfg.predictions, build.build_datamodule(cfg), tmp_path / "nms", changes)
    assert rescored["evaluation"]["localization"]["nms_threshold"] == 0.1
    assert rescored["evaluation_overrides"] == {"localization.nms_threshold": 0.1}
    # the override acts: other detections (the mAP of this tiny run may or may not move)
    detections = [json.loads((d / "detections.json").read_text())["results"] for d in (out, tmp_path / "nms")]
    assert detections[0] != detections[1]
    assert json.loads((tmp_path / "nms" / "metrics.json").read_text())["test"] == rescored["test"]
