"""Training / evaluation pipelines on already-built objects (``issf.app`` builds them from the config)."""

from __future__ import annotations

import copy
import csv
import io
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from rich.console import Console
from rich.table import Table

from issf.eval.detections import save_detections
from issf.eval.evaluator import EvaluationConfig
from issf.eval.predictions import read_predictions, score_predictions
from issf.train.checkpoints import check_checkpoint_fits, check_feature_identity, read_checkpoint
from issf.train.module import SELECTED_ON_VALIDATION, ISSFModule, selected_checkpoint_tag
from issf.utils.io import tagged_file, write_json

log = logging.getLogger(__name__)


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    """Log mAP summaries (one row per entry) as a table (the console and run.log show it): as wide as the terminal
    (200 columns when the output is not a terminal), missing values as "-", and an average that
    repeats another column (``AVG`` over the same tIoUs as ``AVG(0.1:0.7)``) shown once."""
    if not rows:
        return
    first = next(iter(rows.values()))
    columns = [c for c in first if not (c == "AVG" and any(
        k.startswith("AVG(") and all(r.get(k) == r.get("AVG") for r in rows.values()) for k in first))]
    table = Table(title=title)
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for name, values in rows.items():
        table.add_row(name, *[_cell(values.get(c)) for c in columns])
    log.info(_render(table))


def _render(table: Table) -> str:
    """The table as text for the log (as wide as the terminal, 200 columns when not a terminal)."""
    buffer = io.StringIO()
    width = shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 200
    Console(file=buffer, width=width, color_system=None).print(table)
    return buffer.getvalue().rstrip()


def _cell(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def fit_and_test(
    trainer: pl.Trainer, module: ISSFModule, datamodule: pl.LightningDataModule, output_dir: str | os.PathLike,
    ckpt_path: str | None = None, test: bool = True, provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit, test the last weights (and the best checkpoint when there is one), write metrics.json
    and detections.json into ``output_dir``; returns the metrics dictionary. metrics.json records
    the feature file's checksum and ``provenance`` (what a resume was allowed to change). The test
    stops, naming both checksums, when the feature file was replaced during the fit."""
    output_dir = Path(output_dir)
    file = getattr(datamodule, "file", None)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics: dict[str, Any] = {"epochs": _epochs_done(trainer)}
    if file is not None:
        metrics["feature_checksum"] = file.checksum
    metrics.update(provenance or {})
    if trainer.current_epoch != metrics["epochs"]:  # a fork/spawn launcher: test rows log the same epoch
        trainer.fit_loop.epoch_progress.current.completed = metrics["epochs"]
    last_val = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    last_val = last_val or _last_validation_logged(output_dir)  # a resume with nothing left to fit
    if last_val:
        metrics["val_last"] = last_val
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    best_epoch = _checkpoint_epoch(best)
    best_score = _best_score(checkpoint)
    selected = selected_checkpoint_tag(datamodule)
    if best_score is not None:
        metrics["val_best"] = {"score": best_score, "path": _relative_to(best, output_dir), "epoch": best_epoch,
                               "selected_on": getattr(datamodule, "val_split", "test")}
    if test:
        if file is not None:
            file.check_unchanged()  # the test must not read another file through the fit's index
        metrics.update(run_test_split(trainer, module, datamodule, output_dir))
        if best:
            # selected on held-out validation videos, or (val_fraction 0) on the test split itself as
            # the official code reports (B16, docs/released_code.md): named apart either way
            how = "selected on validation" if selected == SELECTED_ON_VALIDATION else "best on test, optimistic"
            metrics.update(run_test_split(trainer, module, datamodule, output_dir, ckpt_path=best, tag=selected,
                                          title=f"{selected} (epoch {best_epoch}, {how})"))
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
    return metrics


def _last_validation_logged(output_dir: Path) -> dict[str, float]:
    """The last ``val/*`` row of the run's CSV history: what a run resumed after its last epoch (a
    kill during the final test) reports as ``val_last``, since its fit evaluates nothing."""
    path = output_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if any(k.startswith("val/") and v not in ("", None) for k, v in r.items())]
    return {k.split("/", 1)[1]: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v} if rows else {}


def _epochs_done(trainer: pl.Trainer) -> int:
    """Training epochs completed. A fork/spawn DDP launcher hands back the weights and the trainer
    state but not the loop counters, so the main process then reads the last checkpoint's epoch."""
    if trainer.current_epoch == 0 and trainer.max_epochs:
        for callback in trainer.checkpoint_callbacks:
            last = Path(callback.dirpath or "") / "last.ckpt"
            if callback.dirpath and last.is_file():
                return int(read_checkpoint(last)["epoch"]) + 1
    return trainer.current_epoch


def _best_score(checkpoint: Any) -> float | None:
    """The best monitored score; read from the best checkpoint's own callback state when a fork/spawn
    DDP launcher handed back only its path."""
    if checkpoint is None:
        return None
    if checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    if checkpoint.best_model_path and Path(checkpoint.best_model_path).is_file():
        states = read_checkpoint(checkpoint.best_model_path).get("callbacks", {})
        for key, state in states.items():
            if key.startswith(type(checkpoint).__name__) and state.get("monitor") == checkpoint.monitor:
                score = state.get("best_model_score")
                return None if score is None else float(score)
    return None


def _checkpoint_epoch(path: str) -> int | None:
    """The epoch (counted from 0, as in the CSV log and checkpoint names) a checkpoint was saved at."""
    return int(read_checkpoint(path)["epoch"]) if path and Path(path).is_file() else None


def _relative_to(path: str, folder: Path) -> str:
    """``path`` relative to the run directory when inside it (metrics.json does not depend on where
    the run directory lies)."""
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def run_test_split(
    trainer: pl.Trainer, module: ISSFModule, datamodule: pl.LightningDataModule, output_dir: Path,
    ckpt_path: str | None = None, tag: str = "test", title: str | None = None,
) -> dict[str, Any]:
    """Test, then score the test predictions the module wrote (rank 0; also when the strategy forks
    or spawns workers) and write the detections of the tested weights into ``output_dir``."""
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    trainer.strategy.barrier("test predictions written")  # rank 0 writes them after the other ranks finish
    preds = read_predictions(tagged_file(trainer.default_root_dir, "predictions.h5", tag))
    gt = datamodule.ground_truth(preds.split)
    result = score_predictions(preds, gt, EvaluationConfig(**preds.evaluation))
    if trainer.is_global_zero:
        save_detections(tagged_file(output_dir, "detections.json", tag), result.detections, gt.video_ids,
                        gt.class_names)
        print_table(f"{title or tag}: mAP (%)", {tag: result.summary, "whole-video baseline": result.baseline})
    return {tag: result.summary, f"{tag}_per_class_ap": result.per_class, f"{tag}_baseline": result.baseline}


def evaluate_checkpoint(
    ckpt_path: str, trainer: pl.Trainer, datamodule: pl.LightningDataModule, output_dir: str | os.PathLike,
    overrides: dict[str, Any] | None = None, allow_other_features: bool = False,
) -> dict[str, Any]:
    """Test a checkpoint with the evaluation settings it was trained with, ``overrides`` (dotted
    keys below the evaluation settings, e.g. ``localization.nms_threshold``) replaced; writes
    metrics.json with the settings used. A feature file other than the one trained on (checksum)
    is an error unless ``allow_other_features``."""
    checkpoint = read_checkpoint(ckpt_path)  # names the file when it is not a usable checkpoint
    datamodule.setup()
    check_checkpoint_fits(checkpoint, ckpt_path, len(datamodule.class_names), datamodule.feature_dim)
    file = getattr(datamodule, "file", None)
    identity = {} if file is None else {"feature_checksum": file.checksum, **check_feature_identity(
        checkpoint.get("hyper_parameters", {}).get("feature_checksum"), ckpt_path, file.checksum, file.path,
        allow_other_features)}
    module = ISSFModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    settings = with_overrides(module.hparams.get("evaluation"), overrides)
    module.eval_cfg = EvaluationConfig(**settings)
    if overrides and trainer.is_global_zero:
        log.info(f"evaluation settings of {ckpt_path}, with {overrides}")
    metrics = {"checkpoint": str(ckpt_path), **identity, "evaluation": settings,
               "evaluation_overrides": dict(overrides or {}), **run_test_split(trainer, module, datamodule, Path(output_dir))}
    if trainer.is_global_zero:
        write_json(Path(output_dir) / "metrics.json", metrics)
    return metrics


def evaluate_predictions(
    path: str, datamodule: pl.LightningDataModule, output_dir: str | os.PathLike, overrides: dict[str, Any] | None = None,
    allow_other_features: bool = False,
) -> dict[str, Any]:
    """Re-localize and score stored test predictions (no model) with the evaluation settings of the
    run that wrote them, ``overrides`` (dotted keys below the evaluation settings) replaced; writes
    metrics.json and detections.json. Ground truth of a feature file other than the predictions'
    (checksum) is an error unless ``allow_other_features``."""
    preds = read_predictions(path)
    datamodule.setup()
    file = getattr(datamodule, "file", None)
    identity = {} if file is None else {"feature_checksum": file.checksum, **check_feature_identity(
        preds.feature_checksum, path, file.checksum, file.path, allow_other_features)}
    settings = with_overrides(preds.evaluation, overrides)
    gt = datamodule.ground_truth(preds.split)
    result = score_predictions(preds, gt, EvaluationConfig(**settings))
    print_table(f"predictions: {path}", {"test": result.summary, "whole-video baseline": result.baseline})
    out = Path(output_dir)
    save_detections(out / "detections.json", result.detections, gt.video_ids, gt.class_names)
    metrics = {"predictions": str(path), **identity, "evaluation": settings, "evaluation_overrides": dict(overrides or {}),
               "test": result.summary, "test_per_class_ap": result.per_class, "test_baseline": result.baseline}
    write_json(out / "metrics.json", metrics)
    return metrics


def with_overrides(settings: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``settings`` with dotted-key ``overrides`` (``localization.nms_threshold``) applied."""
    settings = copy.deepcopy(dict(settings or {}))
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = settings
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return settings


def evaluate_detections_file(
    path: str, datamodule: pl.LightningDataModule, evaluation: dict[str, Any], output_dir: str | os.PathLike
) -> dict[str, Any]:
    """Score an external ActivityNet-format results file against the test split."""
    from issf.eval.detections import load_detections
    from issf.eval.evaluator import VideoEvaluator

    datamodule.setup()
    gt = datamodule.ground_truth("test")
    evaluator = VideoEvaluator(gt, EvaluationConfig(**evaluation), datamodule.snippet_seconds)
    evaluator.add(load_detections(path, gt))
    result = evaluator.compute()
    print_table(f"detections: {path}", {"test": result["summary"]})
    metrics = {"detections": str(path), "test": result["summary"], "test_per_class_ap": result["per_class"]}
    write_json(Path(output_dir) / "metrics.json", metrics)
    return metrics
