"""Run diagnostics: timeline plots of a few fixed videos during training, summary charts after
testing, and the same figures, detections and mAP summary on W&B when a ``WandbLogger`` is used
(the figures also on TensorBoard with a ``TensorBoardLogger``).

PNGs go to ``<trainer.default_root_dir>/<out_subdir>/<tag>_epoch<NNN>_<name>.png`` where ``tag``
is ``val``, ``test_curve``, ``test``, ``test_val_selected`` or ``test_best_on_test`` (tests of the best checkpoint; ``NNN`` is
the 0-based epoch of the weights evaluated, as in the CSV log and the checkpoint names). Only the
global-zero process plots and logs. A failing figure is reported as a warning and skipped.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from matplotlib import image as mpimg
from matplotlib.figure import Figure
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from issf.analysis.viz import (
    plot_error_breakdown,
    plot_map_curves,
    plot_per_class_ap,
    plot_video_timeline,
    save_figure,
)
from issf.data.annotations import GroundTruth
from issf.eval.detections import Detections
from issf.eval.error_analysis import error_breakdown
from issf.eval.evaluator import EvaluationResult
from issf.train.checkpoints import CheckpointError, read_checkpoint
from issf.train.module import ISSFModule, evaluation_tag

log = logging.getLogger(__name__)

DETECTION_COLUMNS = ["video_id", "label", "start", "end", "score"]


def choose_videos(gt: GroundTruth, num_videos: int, video_ids: Sequence[str] | None = None) -> list[int]:
    """Indices into ``gt`` of the videos to plot: ``video_ids`` that ``gt`` holds (in the given
    order), else the first ``num_videos`` videos with ground-truth segments (file order)."""
    if video_ids:
        index = gt.video_index()
        missing = [v for v in video_ids if v not in index]
        if missing:
            log.warning("DiagnosticPlots: videos not in this split: %s", missing)
        return [index[v] for v in video_ids if v in index]
    with_gt = np.unique(gt.segment_video)
    return [int(v) for v in with_gt[:num_videos]]


def evaluated_epoch(trainer: Any, split: str, checkpoint_epoch: int | None = None) -> int:
    """The 0-based epoch whose weights an evaluation scored, counted as in the CSV log and the
    checkpoint names: the current epoch for validation, the last trained one for the test of the
    last weights, the checkpoint's own epoch for a test of a checkpoint (given to ``trainer.test``,
    or ``checkpoint_epoch``: the module's weights were loaded from it and this trainer trained none)."""
    if split != "test":
        return int(trainer.current_epoch)
    if trainer.ckpt_path:
        try:
            return int(read_checkpoint(trainer.ckpt_path)["epoch"])
        except (CheckpointError, KeyError):
            pass
    if checkpoint_epoch is not None and int(trainer.current_epoch) == 0:
        return checkpoint_epoch
    return max(0, int(trainer.current_epoch) - 1)


def safe_name(text: str) -> str:
    """``text`` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "video"


def detection_rows(detections: Detections, gt: GroundTruth, max_rows: int | None = None) -> list[list[Any]]:
    """Detections (seconds) as ``[video_id, class name, start, end, score]`` rows, best score
    first, at most ``max_rows``."""
    order = np.argsort(-detections.score, kind="stable")[:max_rows]
    return [
        [gt.video_ids[detections.video[i]], gt.class_names[detections.label[i]],
         float(detections.start[i]), float(detections.end[i]), float(detections.score[i])]
        for i in order
    ]


def table_cell(v: float | None) -> float | None:
    """A number for a W&B table: missing or NaN -> None."""
    return None if v is None or math.isnan(float(v)) else float(v)


def summary_rows(rows: dict[str, dict[str, float]]) -> tuple[list[str], list[list[Any]]]:
    """Columns ``["row", *metrics]`` and one row per entry of ``rows`` (missing or NaN -> None)."""
    metrics: list[str] = []
    for values in rows.values():
        metrics += [k for k in values if k not in metrics]
    return ["row", *metrics], [[name, *(table_cell(values.get(m)) for m in metrics)] for name, values in rows.items()]


def video_timeline(pl_module: ISSFModule, features: np.ndarray, gt: GroundTruth, v: int,
                   detections: Detections | None) -> Figure:
    """Timeline of video ``v`` of ``gt``: model outputs of ``pl_module.inspect_video`` on its
    ``features`` [T, D], with ground truth and ``detections`` (seconds)."""
    labels = gt.labels[v] if gt.labels is not None and gt.labels[v].any() else None
    out = pl_module.inspect_video(features, labels)
    return plot_video_timeline(
        v, gt, detections, out["cas"], pl_module.class_names, pl_module.snippet_seconds,
        attention=out.get("attention"), saliency=out.get("saliency"), salient=out.get("salient"),
        pseudo_labels=out.get("pseudo_labels"),
    )


class DiagnosticPlots(pl.Callback):
    """Diagnostic figures of a run (see the module docstring).

    After the 1st, (1 + n)-th, (1 + 2n)-th ... validation (``n = every_n_evals``; sanity checks
    excluded) and after every test: a timeline (GT, detections, CAS, attention, saliency, salient
    snippets, pseudo-labels) of each fixed video. After a test also: per-class AP, the error
    breakdown at tIoU ``error_tiou`` and, with a ``CSVLogger``, the validation mAP curves. With a
    ``WandbLogger`` the figures are logged as images (``plots/<tag>/<video_id>``,
    ``plots/<tag>/per_class_ap``, ``plots/<tag>/errors``, ``plots/<tag>/map_curves``) and, after a
    test, the tables ``<tag>/detections`` (best ``max_table_rows`` rows), ``<tag>/summary`` and
    ``<tag>/per_class_ap``.

    The fixed videos are ``video_ids`` when given, else the first ``num_videos`` videos with
    ground truth of the evaluated split.
    """

    def __init__(
        self,
        every_n_evals: int = 1,
        num_videos: int = 3,
        video_ids: Sequence[str] | None = None,
        out_subdir: str = "plots",
        error_tiou: float = 0.5,
        max_table_rows: int = 10_000,
        dpi: int = 100,
    ):
        if every_n_evals < 1:
            raise ValueError(f"DiagnosticPlots: every_n_evals must be >= 1, got {every_n_evals}")
        self.every_n_evals = int(every_n_evals)
        self.num_videos = int(num_videos)
        self.video_ids = list(video_ids) if video_ids else None
        self.out_subdir = out_subdir
        self.error_tiou = float(error_tiou)
        self.max_table_rows = int(max_table_rows)
        self.dpi = int(dpi)
        self.num_evals = 0

    def state_dict(self) -> dict[str, Any]:
        """The evaluation count, so a resumed run keeps the plotting schedule."""
        return {"num_evals": self.num_evals}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_evals = int(state_dict.get("num_evals", 0))

    # ------------------------------------------------------------------ hooks
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        due = self.num_evals % self.every_n_evals == 0
        self.num_evals += 1
        if due:
            self._guarded("validation plots", self.plot_evaluation, trainer, pl_module, "val", "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        tag = evaluation_tag(trainer, "test")
        self._guarded("test plots", self.plot_evaluation, trainer, pl_module, "test", tag)
        self._guarded("test tables", self.log_tables, trainer, pl_module, "test", tag)

    # ------------------------------------------------------------------ work
    def out_dir(self, trainer: pl.Trainer) -> Path:
        """Folder of the PNGs."""
        return Path(trainer.default_root_dir) / self.out_subdir

    def plot_evaluation(self, trainer: pl.Trainer, pl_module: ISSFModule, split: str, tag: str) -> list[Path]:
        """Figures of the last ``split`` evaluation of ``pl_module``; returns the PNGs written."""
        result = pl_module.evaluation_results.get(split)
        if result is None:
            log.info("DiagnosticPlots: no %s results to plot", split)
            return []
        gt, dets = result.ground_truth, result.detections
        epoch = evaluated_epoch(trainer, split, pl_module.checkpoint_epoch)
        prefix = f"{tag}_epoch{epoch:03d}"
        figures: dict[str, Callable[[], Figure]] = {}
        file = trainer.datamodule.file if trainer.datamodule is not None else None
        if file is None:
            log.warning("DiagnosticPlots: the datamodule has no feature file; video timelines skipped")
        else:
            index = {vid: i for i, vid in enumerate(file.video_ids)}
            for v in choose_videos(gt, self.num_videos, self.video_ids):
                vid = gt.video_ids[v]
                figures[vid] = lambda v=v, vid=vid: video_timeline(
                    pl_module, file.features(index[vid]), gt, v, dets)
        if split == "test":
            figures["per_class_ap"] = lambda: plot_per_class_ap(
                result.per_class, title=f"{tag}: per-class AP (%), epoch {epoch}")
            figures["errors"] = lambda: self._errors_figure(result)
            csv_path = self._metrics_csv(trainer)
            if csv_path is not None and "val/" in csv_path.read_text().split("\n", 1)[0]:  # a training history
                figures["map_curves"] = lambda: plot_map_curves(csv_path, prefix="val/")

        images: dict[str, Path] = {}
        for name, make in figures.items():
            path = self._guarded(f"figure {tag}/{name}", self._save, make,
                                 self.out_dir(trainer) / f"{prefix}_{safe_name(name)}.png")
            if path is not None:
                images[name] = path
        if images and self._wandb_loggers(trainer):
            import wandb

            payload = {f"plots/{tag}/{name}": wandb.Image(str(path), caption=f"{name}, epoch {epoch}")
                       for name, path in images.items()}
            self._log_wandb(trainer, {**payload, "epoch": epoch})
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, path in images.items():
                    self._guarded("TensorBoard image", logger.experiment.add_image, f"plots/{tag}/{name}",
                                  mpimg.imread(path)[..., :3], trainer.global_step, dataformats="HWC")
        return list(images.values())

    def log_tables(self, trainer: pl.Trainer, pl_module: ISSFModule, split: str, tag: str) -> None:
        """W&B tables of the last ``split`` evaluation: detections, mAP summary, per-class AP."""
        result = pl_module.evaluation_results.get(split)
        if result is None or not self._wandb_loggers(trainer):
            return
        import wandb

        columns, rows = summary_rows({tag: result.summary, "whole-video baseline": result.baseline})
        per_class = [[k, table_cell(v)] for k, v in result.per_class.items()]
        self._log_wandb(trainer, {
            f"{tag}/detections": wandb.Table(
                columns=DETECTION_COLUMNS, data=detection_rows(result.detections, result.ground_truth, self.max_table_rows)),
            f"{tag}/summary": wandb.Table(columns=columns, data=rows),
            f"{tag}/per_class_ap": wandb.Table(columns=["class", "AP"], data=per_class),
            "epoch": evaluated_epoch(trainer, split, pl_module.checkpoint_epoch),
        })

    # ------------------------------------------------------------------ helpers
    def _save(self, make: Callable[[], Figure], path: Path) -> Path:
        return save_figure(make(), path, dpi=self.dpi)

    def _errors_figure(self, result: EvaluationResult) -> Figure:
        breakdown = error_breakdown(result.detections, result.ground_truth, tiou=self.error_tiou,
                                    filter_ambiguous=result.config.filter_ambiguous)
        return plot_error_breakdown(breakdown)

    @staticmethod
    def _metrics_csv(trainer: pl.Trainer) -> Path | None:
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()
                path = Path(logger.experiment.metrics_file_path)
                return path if path.exists() else None
        return None

    @staticmethod
    def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def _log_wandb(self, trainer: pl.Trainer, payload: dict[str, Any]) -> None:
        for logger in self._wandb_loggers(trainer):
            self._guarded("W&B logging", logger.log_metrics, payload, step=trainer.global_step)

    @staticmethod
    def _guarded(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; an exception becomes a warning and ``None``."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - diagnostics must never stop a run
            log.warning("DiagnosticPlots: %s failed: %s: %s", what, type(err).__name__, err)
            log.debug("DiagnosticPlots: %s traceback", what, exc_info=True)
            return None
