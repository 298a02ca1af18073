"""DiagnosticPlots: unit tests on a stub module and trainer, and a short real training run."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from issf.app import tasks
from issf.data.annotations import GroundTruth
from issf.eval.detections import Detections
from issf.eval.evaluator import EvaluationConfig, EvaluationResult
from issf.train.diagnostics import (
    DETECTION_COLUMNS,
    DiagnosticPlots,
    choose_videos,
    detection_rows,
    summary_rows,
)
from tests.conftest import compose_cfg
from tests.markers import requires_package

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SNIP, T, C = 0.5, 40, 3
NAMES = ["Run", "Jump", "Throw"]
FILE_ORDER = ["v2", "other", "v0", "v1"]  # the feature file holds the videos in another order


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------------------ stubs
def make_gt() -> GroundTruth:
    return GroundTruth(
        class_names=NAMES, video_ids=["v0", "v1", "v2"], durations=[T * SNIP] * 3,
        segments=[[2.0, 6.0], [10.0, 12.0], [3.0, 9.0]], segment_video=[1, 1, 2], segment_label=[0, 2, 1],
    )


def make_dets() -> Detections:
    return Detections(video=[1, 1, 2, 0], start=[2.0, 9.0, 3.5, 1.0], end=[6.5, 12.0, 8.0, 4.0],
                      label=[0, 2, 1, 1], score=[0.9, 0.4, 0.7, 0.2], units="seconds")


class StubModule:
    """What DiagnosticPlots reads from an ISSFModule."""

    def __init__(self, fail: bool = False, checkpoint_epoch: int | None = None):
        self.class_names, self.snippet_seconds, self.fail = NAMES, SNIP, fail
        self.checkpoint_epoch = checkpoint_epoch
        self.seen: list[int] = []
        result = EvaluationResult(
            summary={"mAP@0.5": 40.0, "AVG": 35.0, "cls_mAP": 80.0},
            per_class={"Run": 50.0, "Jump": 30.0, "Throw": float("nan")}, baseline={"mAP@0.5": 10.0, "AVG": 9.0},
            detections=make_dets(), ground_truth=make_gt(), config=EvaluationConfig())
        self.evaluation_results = {"val": result, "test": result}

    def inspect_video(self, features: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self.fail:
            raise RuntimeError("model exploded")
        self.seen.append(int(features[0, 0]))
        rng = np.random.default_rng(0)
        sal = rng.random(T)
        return {"video_scores": rng.random(C), "cas": rng.random((T, C)), "attention": rng.random(T),
                "saliency": sal, "salient": sal > 0.6, "pseudo_labels": rng.normal(size=(T, C + 1))}


class StubFile:
    video_ids = FILE_ORDER

    def features(self, i: int) -> np.ndarray:
        return np.full((T, 8), float(i), dtype=np.float32)  # the value tells which video was read


def stub_trainer(tmp_path: Path, epoch: int = 0, **kw) -> SimpleNamespace:
    base = dict(default_root_dir=str(tmp_path), loggers=[], is_global_zero=True, sanity_checking=False,
                current_epoch=epoch, global_step=10 * epoch, ckpt_path=None,
                datamodule=SimpleNamespace(file=StubFile()))
    return SimpleNamespace(**{**base, **kw})


class RecordingWandb(WandbLogger):
    """A WandbLogger that records what it is asked to log instead of starting a run."""

    def __init__(self):
        self.logged: list[tuple[dict, int | None]] = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((dict(metrics), step))


# -------------------------------------------------------------------------------- helpers
def test_choose_videos_first_with_ground_truth_or_given_ids():
    gt = make_gt()
    assert choose_videos(gt, 3) == [1, 2]  # v0 has no GT
    assert choose_videos(gt, 1) == [1]
    assert choose_videos(gt, 3, ["v2", "missing", "v0"]) == [2, 0]


def test_detection_rows_best_first_and_capped():
    rows = detection_rows(make_dets(), make_gt(), max_rows=3)
    assert [r[4] for r in rows] == [0.9, 0.7, 0.4]
    assert rows[0] == ["v1", "Run", 2.0, 6.5, 0.9]
    assert rows[1][:2] == ["v2", "Jump"]
    assert len(detection_rows(make_dets(), make_gt())) == 4


def test_summary_rows_union_of_metrics_nan_as_none():
    columns, rows = summary_rows({"test": {"a": 1.0, "b": float("nan")}, "base": {"c": 2.0}})
    assert columns == ["row", "a", "b", "c"]
    assert rows == [["test", 1.0, None, None], ["base", None, None, 2.0]]


# -------------------------------------------------------------------------------- callback
def test_validation_plots_every_n_evals_and_not_in_sanity_check(tmp_path):
    cb, module = DiagnosticPlots(every_n_evals=2, num_videos=3), StubModule()
    cb.on_validation_end(stub_trainer(tmp_path, sanity_checking=True), module)
    for epoch in range(4):
        cb.on_validation_end(stub_trainer(tmp_path, epoch), module)
    files = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert files == [f"val_epoch{e:03d}_{v}.png" for e in (0, 2) for v in ("v1", "v2")]
    assert all(is_png(tmp_path / "plots" / f) for f in files)
    # v1 and v2 sit at positions 3 and 0 of the feature file
    assert module.seen == [3, 0, 3, 0]


def test_schedule_survives_resume(tmp_path):
    first = DiagnosticPlots(every_n_evals=2)
    first.on_validation_end(stub_trainer(tmp_path, 0), StubModule())  # plots
    resumed = DiagnosticPlots(every_n_evals=2)
    resumed.load_state_dict(first.state_dict())
    resumed.on_validation_end(stub_trainer(tmp_path, 1), StubModule())  # 2nd evaluation: no plots
    assert not list((tmp_path / "plots").glob("val_epoch001_*"))
    assert len(list((tmp_path / "plots").glob("val_epoch000_*"))) == 2


def test_test_end_writes_timelines_and_summary_charts(tmp_path):
    csv = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for epoch in range(3):
        csv.log_metrics({"val/mAP@0.5": 10.0 + epoch, "val/AVG": 8.0 + epoch, "epoch": epoch}, step=epoch)
    cb = DiagnosticPlots(num_videos=1, out_subdir="figs")
    cb.on_test_end(stub_trainer(tmp_path, 3, loggers=[csv]), StubModule())
    cb.on_test_end(stub_trainer(tmp_path, 3, ckpt_path="best.ckpt"), StubModule())
    out = tmp_path / "figs"
    expected = {f"test_epoch002_{n}.png" for n in ("v1", "per_class_ap", "errors", "map_curves")}
    expected |= {f"test_best_on_test_epoch002_{n}.png" for n in ("v1", "per_class_ap", "errors")}
    assert {p.name for p in out.iterdir()} == expected
    assert all(is_png(out / f) for f in expected)


def test_test_of_loaded_weights_is_named_by_their_checkpoint_epoch(tmp_path):
    """task=eval loads a checkpoint into the module and tests it with a fresh trainer."""
    cb = DiagnosticPlots(num_videos=1)
    cb.on_test_end(stub_trainer(tmp_path, 0), StubModule(checkpoint_epoch=29))
    # a fit that resumed from a checkpoint and trained on names the last trained epoch
    cb.on_test_end(stub_trainer(tmp_path, 40), StubModule(checkpoint_epoch=29))
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"test_epoch029_v1.png", "test_epoch039_v1.png"} <= names
    assert not any("epoch000" in n for n in names)


def test_failures_are_warnings_and_other_figures_still_come(tmp_path, caplog):
    cb = DiagnosticPlots()
    with caplog.at_level(logging.WARNING, logger="issf.train.diagnostics"):
        cb.on_test_end(stub_trainer(tmp_path, 1), StubModule(fail=True))
    assert "model exploded" in caplog.text
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "test_epoch000_per_class_ap.png", "test_epoch000_errors.png"}


def test_only_global_zero_plots(tmp_path):
    cb = DiagnosticPlots()
    cb.on_validation_end(stub_trainer(tmp_path, is_global_zero=False), StubModule())
    cb.on_test_end(stub_trainer(tmp_path, is_global_zero=False), StubModule())
    assert not (tmp_path / "plots").exists()


@requires_package("wandb")
def test_wandb_images_and_tables(tmp_path):
    import wandb

    wb = RecordingWandb()
    cb = DiagnosticPlots(num_videos=2, max_table_rows=2)
    cb.on_validation_end(stub_trainer(tmp_path, 4, loggers=[wb]), StubModule())
    cb.on_test_end(stub_trainer(tmp_path, 5, loggers=[wb]), StubModule())
    (val, step_val), (test, _), (tables, _) = wb.logged
    assert step_val == 40 and val["epoch"] == 4
    assert set(val) == {"plots/val/v1", "plots/val/v2", "epoch"}
    assert isinstance(val["plots/val/v1"], wandb.Image)
    assert {"plots/test/v1", "plots/test/per_class_ap", "plots/test/errors"} <= set(test)
    detections = tables["test/detections"]
    assert isinstance(detections, wandb.Table) and detections.columns == DETECTION_COLUMNS
    assert [r[4] for r in detections.data] == [0.9, 0.7]
    assert tables["test/summary"].data[0][:3] == ["test", 40.0, 35.0]
    assert tables["test/per_class_ap"].data[2] == ["Throw", None]


def test_default_callbacks_include_plots(tmp_path):
    cfg = compose_cfg(tmp_path)
    assert cfg.callbacks.plots._target_ == "issf.train.diagnostics.DiagnosticPlots"
    assert {"model_checkpoint", "rng_state"} <= set(cfg.callbacks)
    import hydra

    cb = hydra.utils.instantiate(compose_cfg(tmp_path, "callbacks.plots.every_n_evals=4").callbacks.plots)
    assert isinstance(cb, DiagnosticPlots) and cb.every_n_evals == 4 and cb.num_videos == 3


# -------------------------------------------------------------------------------- real run
@pytest.mark.slow
def test_smoke_run_writes_plots(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=smoke", "logger=csv", "trainer.max_epochs=3",
                      "trainer.check_val_every_n_epoch=1", "callbacks.plots.every_n_evals=2",
                      "callbacks.plots.num_videos=2")
    out = tmp_path / "out"
    metrics = tasks.task_train(cfg, out)
    plots = out / "plots"
    names = {p.name for p in plots.iterdir()}
    videos = sorted({n.split("_", 2)[2][: -len(".png")] for n in names if n.startswith("val_")})
    assert len(videos) == 2, names
    expected = {f"val_epoch{e:03d}_{v}.png" for e in (0, 2) for v in videos}
    # epochs counted from 0 everywhere: the last weights are epoch 2's, the best checkpoint's its own
    for tag, epoch in (("test", 2), ("test_best_on_test", metrics["val_best"]["epoch"])):
        expected |= {f"{tag}_epoch{epoch:03d}_{n}.png" for n in [*videos, "per_class_ap", "errors", "map_curves"]}
    assert names == expected
    assert all(is_png(plots / n) for n in names)


@requires_package("tensorboard")
def test_tensorboard_gets_the_same_figures(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(save_dir=str(tmp_path), name="tb", version="")
    cb = DiagnosticPlots(num_videos=2)
    cb.on_validation_end(stub_trainer(tmp_path, 4, loggers=[tb]), StubModule())
    cb.on_test_end(stub_trainer(tmp_path, 5, loggers=[tb]), StubModule())
    tb.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {"plots/val/v1", "plots/val/v2", "plots/test/v1", "plots/test/per_class_ap", "plots/test/errors"} <= images
    (first,) = events.Images("plots/val/v1")
    assert first.step == 40 and first.width > 100 and first.height > 100
