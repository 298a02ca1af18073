"""Training / evaluation pipelines on already-built objects (run.py builds them from the config)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from rich.console import Console
from rich.table import Table

from issf.evaluation import EvaluationConfig
from issf.io import write_json
from issf.module import ISSFModule


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    """Print mAP summaries (one row per entry) as a table on the console."""
    if not rows:
        return
    columns = list(next(iter(rows.values())).keys())
    table = Table(title=title)
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for name, values in rows.items():
        table.add_row(name, *[f"{values.get(c, float('nan')):.2f}" for c in columns])
    Console(width=200).print(table)


def fit_and_test(
    trainer: pl.Trainer, module: ISSFModule, datamodule: pl.LightningDataModule, output_dir: str | os.PathLike,
    ckpt_path: str | None = None, test: bool = True,
) -> dict[str, Any]:
    """Fit, test the last weights (and the best checkpoint when there is one), write metrics.json
    and detections.json into ``output_dir``; returns the metrics dictionary."""
    output_dir = Path(output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics: dict[str, Any] = {"epochs": trainer.current_epoch}
    last_val = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if last_val:
        metrics["val_last"] = last_val
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["val_best"] = {"score": float(checkpoint.best_model_score), "path": checkpoint.best_model_path}
    if test:
        metrics.update(run_test_split(trainer, module, datamodule, output_dir))
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if best:
            # the official code reports the best of its test-set evaluations (B16,
            # docs/released_code.md): keep both figures
            metrics.update(run_test_split(trainer, module, datamodule, output_dir, ckpt_path=best, tag="test_best_ckpt"))
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
    return metrics


def run_test_split(
    trainer: pl.Trainer, module: ISSFModule, datamodule: pl.LightningDataModule, output_dir: Path,
    ckpt_path: str | None = None, tag: str = "test",
) -> dict[str, Any]:
    """Run the test split; the module (rank 0) writes the detections of the tested weights and a
    results file, read back here (this also works when the strategy forks or spawns workers)."""
    module.export_dir, module.test_tag = str(output_dir), tag
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    result = json.loads((Path(output_dir) / f"{tag}_results.json").read_text())
    if trainer.is_global_zero:
        print_table(f"{tag}: mAP (%)", {tag: result["summary"], "whole-video baseline": result["baseline"]})
    return {tag: result["summary"], f"{tag}_per_class_ap": result["per_class"], f"{tag}_baseline": result["baseline"]}


def evaluate_checkpoint(
    ckpt_path: str, trainer: pl.Trainer, datamodule: pl.LightningDataModule, output_dir: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test a checkpoint with the evaluation settings it was trained with, ``overrides`` (dotted
    keys below the evaluation settings, e.g. ``localization.nms_threshold``) replaced; writes
    metrics.json with the settings used."""
    module = ISSFModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    settings = copy.deepcopy(dict(module.hparams.get("evaluation") or {}))
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = settings
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    module.eval_cfg = EvaluationConfig(**settings)
    if overrides and trainer.is_global_zero:
        print(f"evaluation settings of {ckpt_path}, with {overrides}")
    metrics = {"checkpoint": str(ckpt_path), "evaluation": settings, "evaluation_overrides": dict(overrides or {}),
               **run_test_split(trainer, module, datamodule, Path(output_dir))}
    if trainer.is_global_zero:
        write_json(Path(output_dir) / "metrics.json", metrics)
    return metrics


def evaluate_detections_file(
    path: str, datamodule: pl.LightningDataModule, evaluation: dict[str, Any], output_dir: str | os.PathLike
) -> dict[str, Any]:
    """Score an external ActivityNet-format results file against the test split."""
    from issf.detections import load_detections
    from issf.evaluation import VideoEvaluator

    datamodule.setup()
    gt = datamodule.ground_truth("test")
    evaluator = VideoEvaluator(gt, EvaluationConfig(**evaluation), datamodule.snippet_seconds)
    evaluator.add(load_detections(path, gt))
    result = evaluator.compute()
    print_table(f"detections: {path}", {"test": result["summary"]})
    metrics = {"detections": str(path), "test": result["summary"], "test_per_class_ap": result["per_class"]}
    write_json(Path(output_dir) / "metrics.json", metrics)
    return metrics
