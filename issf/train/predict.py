"""Action localization without ground truth (``task=predict``): a checkpoint's network over every
video of a feature file (typically an unlabelled one, ``data.prepare.annotations=none``).

The network runs as in a test (the same loader, the same forward pass) and its per-video outputs
are stored in ``predictions.h5`` in the test's format; the detections are then localized from
that file exactly as a test's are (:func:`issf.eval.predictions.detect_predictions`), with the
class names and evaluation settings stored in the checkpoint, and written as an ActivityNet
results file in seconds. No metric is computed. :func:`relocalize_predictions` re-localizes a
stored ``predictions.h5`` with other settings, without the network.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from issf.data.annotations import GroundTruth
from issf.eval.detections import save_detections
from issf.eval.evaluator import EvaluationConfig
from issf.eval.predictions import (
    Predictions,
    collect,
    detect_predictions,
    read_predictions,
    write_predictions,
)
from issf.train.checkpoints import CheckpointError, check_feature_identity, read_checkpoint
from issf.train.module import ISSFModule
from issf.train.pipeline import with_overrides

log = logging.getLogger(__name__)

PREDICT_SPLIT = "predict"  # the ``split`` attribute of the predictions.h5 that task=predict writes


class PredictingModule(ISSFModule):
    """The LightningModule with Lightning's predict step: per video, the rows a test stores
    (:func:`issf.eval.predictions.collect`), from the same forward pass as a test step."""

    def predict_step(self, batch: dict, batch_idx: int) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
        video_scores, cas, _ = self.net.predict(batch["features"], batch["mask"])
        return collect(batch["index"], video_scores, cas, batch["lengths"], batch.get("scale"))


def predict_checkpoint(
    ckpt_path: str | os.PathLike, trainer: pl.Trainer, datamodule: Any, output_dir: str | os.PathLike,
    overrides: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the checkpoint's network over the test split of ``datamodule`` (a ``FeatureDataModule``
    whose test split holds every video to localize), write ``predictions.h5`` (``data``: the run's
    data config, stored with it) and ``detections.json`` into ``output_dir``; returns what was written.
    Evaluation settings are the checkpoint's, ``overrides`` (dotted keys below them) replaced."""
    if trainer.world_size > 1:
        raise ValueError(f"task=predict runs in one process, got {trainer.world_size} (trainer.devices, "
                         f"trainer.num_nodes): use trainer=cpu or trainer=gpu")
    hparams = read_checkpoint(ckpt_path)["hyper_parameters"]  # names the file when it is not a usable checkpoint
    datamodule.setup()
    file = datamodule.file
    if int(hparams["input_dim"]) != file.feature_dim:
        raise CheckpointError(
            f"{file.path} has {file.feature_dim}-dimensional features, but checkpoint {ckpt_path} was trained on "
            f"{int(hparams['input_dim'])}-dimensional ones (its input_dim): prepare the features the model was "
            f"trained with")
    trained_seconds = float(hparams.get("snippet_seconds", file.snippet_seconds))
    if not np.isclose(trained_seconds, file.snippet_seconds):
        log.warning(f"{file.path}: snippets of {file.snippet_seconds:g} s, but checkpoint {ckpt_path} was trained "
                    f"on snippets of {trained_seconds:g} s; detections are placed in time with {file.snippet_seconds:g} s")
    module = PredictingModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    evaluation = EvaluationConfig(**with_overrides(module.hparams.get("evaluation"), overrides))
    videos = videos_to_localize(datamodule, module.class_names)
    batches = trainer.predict(module, dataloaders=batched(datamodule.test_dataloader()), return_predictions=True)
    out = Path(output_dir)
    path = write_predictions(out / "predictions.h5", [row for batch in batches for row in batch], videos,
                             file.snippet_seconds, dataclasses.asdict(evaluation), split=PREDICT_SPLIT, data=data,
                             feature_checksum=file.checksum)
    return {"checkpoint": str(ckpt_path), **_localize(read_predictions(path), path, videos, evaluation, out)}


def relocalize_predictions(
    path: str | os.PathLike, datamodule: Any, output_dir: str | os.PathLike, overrides: dict[str, Any] | None = None,
    allow_other_features: bool = False,
) -> dict[str, Any]:
    """Localize the stored outputs of a predict run again (no network) with its evaluation settings,
    ``overrides`` replaced; writes ``detections.json`` into ``output_dir``. The videos' durations
    come from ``datamodule``'s file, which must be the one predicted on (checksum) unless
    ``allow_other_features``."""
    preds = read_predictions(path)
    datamodule.setup()
    file = datamodule.file
    check_feature_identity(preds.feature_checksum, path, file.checksum, file.path, allow_other_features)
    evaluation = EvaluationConfig(**with_overrides(preds.evaluation, overrides))
    videos = videos_to_localize(datamodule, preds.class_names)
    return {"from_predictions": str(path), **_localize(preds, Path(path), videos, evaluation, Path(output_dir))}


class _Batches(Dataset):
    """The batches of a loader with a batch sampler, one item each (already collated)."""

    def __init__(self, loader: DataLoader):
        self.dataset, self.collate = loader.dataset, loader.collate_fn
        self.batches = [list(b) for b in loader.batch_sampler]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Any:
        return self.collate([self.dataset[key] for key in self.batches[i]])


def batched(loader: DataLoader) -> DataLoader:
    """``loader`` (the test loader) with the same batches, made without a batch sampler: Lightning's
    predict loop rebuilds a loader's batch sampler through a ``sampler`` argument, which the
    length-bucketing sampler does not have."""
    return DataLoader(_Batches(loader), batch_size=None, num_workers=loader.num_workers)


def videos_to_localize(datamodule: Any, class_names: list[str]) -> GroundTruth:
    """The test split's videos (ids, durations) with the model's classes and no annotation."""
    videos = datamodule.ground_truth("test")
    empty = np.zeros(0, dtype=np.int64)
    return GroundTruth(list(class_names), videos.video_ids, videos.durations, np.zeros((0, 2)), empty, empty)


def _localize(preds: Predictions, source: Path, videos: GroundTruth, evaluation: EvaluationConfig,
              out: Path) -> dict[str, Any]:
    detections = detect_predictions(preds, videos, evaluation)
    path = save_detections(out / "detections.json", detections, videos.video_ids, videos.class_names)
    found = len(np.unique(detections.video))
    log.info(f"{len(detections)} detections in {found} of {videos.num_videos} videos "
             f"({videos.num_videos - found} without any): {path}\n  per-video network outputs: {source}")
    return {"predictions": str(source), "detections_file": str(path), "videos": videos.num_videos,
            "videos_with_detections": found, "detections": len(detections),
            "evaluation": dataclasses.asdict(evaluation)}
