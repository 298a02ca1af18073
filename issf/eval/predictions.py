"""Raw per-video test outputs, stored once (``predictions.h5``) and re-scored without the network.

A test run writes, for every test video, the model's video scores ``[C]`` and class activation
sequence ``[T, C]`` (at the evaluated positions: uniformly sampled test videos keep their
``scale``, original snippets per position), float32 as the model produced them, so that
:func:`score_predictions` with the run's evaluation settings gives exactly the logged figures, and
with any other settings (NMS, thresholds, upsampling, class selection...) re-localizes in seconds.
``task=predict`` stores the same for every video of a feature file without ground truth (split
``predict``); :func:`detect_predictions` localizes them as :func:`score_predictions` does, unscored.

Layout (HDF5): ``video/index`` (position in the split's ground truth), ``video/ids``,
``video/scores`` [V, C], ``video/offsets`` [V + 1] into ``cas`` [sum T, C], ``video/scale`` [V];
attributes ``schema_version``, ``split``, ``classes`` (JSON), ``snippet_seconds``, ``evaluation``
(JSON: the settings the run used), ``data`` (JSON: the run's data config, or null).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from issf.data.annotations import GroundTruth
from issf.eval.classification import classification_map
from issf.eval.detections import Detections
from issf.eval.evaluator import (
    EvaluationConfig,
    EvaluationResult,
    VideoEvaluator,
    localize_batch,
    warn_if_few_detections,
)
from issf.utils.io import atomic_write

SCHEMA_VERSION = 1
_STR = h5py.string_dtype()


class PredictionsError(ValueError):
    """A predictions file that cannot be used; the message names the file."""


@dataclass
class Predictions:
    """Per-video outputs of one test run (see the module docstring)."""

    video_index: np.ndarray  # int64 [V]
    video_ids: list[str]
    video_scores: np.ndarray  # float32 [V, C]
    offsets: np.ndarray  # int64 [V + 1]
    cas: np.ndarray  # float32 [sum T, C]
    scale: np.ndarray  # float64 [V]
    class_names: list[str]
    snippet_seconds: float
    evaluation: dict[str, Any]
    split: str = "test"
    data: dict[str, Any] | None = None  # the run's data config (which feature file), when known
    feature_checksum: str | None = None  # checksum of the feature file the outputs came from, when known

    def video_cas(self, v: int) -> np.ndarray:
        return self.cas[self.offsets[v] : self.offsets[v + 1]]


def collect(index: torch.Tensor, video_scores: torch.Tensor, cas: torch.Tensor, lengths: torch.Tensor,
            scale: torch.Tensor | None) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """One batch of model outputs as per-video rows ``(index, scores [C], cas [T, C], scale)``."""
    scores = video_scores.float().cpu().numpy()
    values = cas.float().cpu().numpy()
    scales = np.ones(len(index)) if scale is None else scale.cpu().numpy()
    return [(int(i), scores[b], values[b, : int(lengths[b])].copy(), float(scales[b]))
            for b, i in enumerate(index.cpu().tolist())]


def write_predictions(
    path: str | os.PathLike, rows: Sequence[tuple[int, np.ndarray, np.ndarray, float]], ground_truth: GroundTruth,
    snippet_seconds: float, evaluation: dict[str, Any], split: str = "test", data: dict[str, Any] | None = None,
    feature_checksum: str | None = None,
) -> Path:
    """Write the rows of :func:`collect` (any order; sorted by video) atomically to ``path``."""
    rows = sorted(rows, key=lambda r: r[0])
    index = np.array([r[0] for r in rows], dtype=np.int64)
    if len(np.unique(index)) != len(index):
        raise ValueError(f"{path}: a video was predicted twice")
    lengths = np.array([len(r[2]) for r in rows], dtype=np.int64)
    path = Path(path)
    with atomic_write(path, "w+b") as f, h5py.File(f, "w") as h5:  # h5py reads back what it writes
        h5.create_dataset("video/index", data=index)
        h5.create_dataset("video/ids", data=np.array([ground_truth.video_ids[i] for i in index], dtype=object),
                          dtype=_STR)
        h5.create_dataset("video/scores", data=np.stack([r[1] for r in rows]).astype(np.float32))
        h5.create_dataset("video/offsets", data=np.concatenate([[0], np.cumsum(lengths)]))
        h5.create_dataset("video/scale", data=np.array([r[3] for r in rows], dtype=np.float64))
        h5.create_dataset("cas", data=np.concatenate([r[2] for r in rows]).astype(np.float32), compression="gzip",
                          compression_opts=1, chunks=True)
        h5.attrs.update(schema_version=SCHEMA_VERSION, split=split, classes=json.dumps(ground_truth.class_names),
                        snippet_seconds=float(snippet_seconds), evaluation=json.dumps(evaluation),
                        data=json.dumps(data))
        if feature_checksum:
            h5.attrs["feature_checksum"] = feature_checksum
    return path


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Load a predictions file; :class:`PredictionsError` names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file {path}: no such file")
    try:
        with h5py.File(path, "r") as h5:
            version = int(h5.attrs.get("schema_version", -1))
            if version != SCHEMA_VERSION:
                raise PredictionsError(f"predictions file {path}: schema version {version}, expected {SCHEMA_VERSION}")
            preds = Predictions(
                video_index=h5["video/index"][()], video_ids=[s.decode() if isinstance(s, bytes) else s
                                                              for s in h5["video/ids"][()]],
                video_scores=h5["video/scores"][()], offsets=h5["video/offsets"][()], cas=h5["cas"][()],
                scale=h5["video/scale"][()], class_names=json.loads(h5.attrs["classes"]),
                snippet_seconds=float(h5.attrs["snippet_seconds"]), evaluation=json.loads(h5.attrs["evaluation"]),
                split=str(h5.attrs["split"]), data=json.loads(h5.attrs.get("data", "null")),
                feature_checksum=str(h5.attrs["feature_checksum"]) if "feature_checksum" in h5.attrs else None,
            )
    except (OSError, KeyError) as err:
        raise PredictionsError(f"predictions file {path}: not a predictions file or damaged ({err})") from err
    return preds


def score_predictions(preds: Predictions, ground_truth: GroundTruth, evaluation: EvaluationConfig,
                      batch_size: int = 64) -> EvaluationResult:
    """Localize and score stored predictions (``summary`` with ``cls_mAP``), as a test run does."""
    _check_videos(preds, ground_truth)
    evaluator = VideoEvaluator(ground_truth, evaluation, preds.snippet_seconds)
    for batch in _batches(preds, batch_size):
        evaluator.update(*batch)
    labels = torch.from_numpy(ground_truth.labels[preds.video_index].astype(np.int64))
    return evaluator.result(cls_map=classification_map(preds.video_scores, labels) / 100.0)


def detect_predictions(preds: Predictions, videos: GroundTruth, evaluation: EvaluationConfig,
                       batch_size: int = 64) -> Detections:
    """The detections (seconds) of stored predictions, localized exactly as :func:`score_predictions`
    does, without scoring them: ``videos`` needs only class names, video ids and durations (the
    segments of unlabelled videos are empty). Warns when most videos got no detection."""
    _check_videos(preds, videos)
    parts, empty = [], []
    for index, scores, cas, lengths, scale in _batches(preds, batch_size):
        dets = localize_batch(index, scores, cas, lengths, scale, evaluation, preds.snippet_seconds, videos.durations)
        parts.append(dets)
        empty.extend(scores.numpy().max(1)[~np.isin(index.numpy(), dets.video)].tolist())
    warn_if_few_detections(np.asarray(empty), len(preds.video_ids), evaluation.localization_config())
    return Detections.concatenate(parts, units="seconds")


def _check_videos(preds: Predictions, ground_truth: GroundTruth) -> None:
    if preds.class_names != list(ground_truth.class_names):
        raise PredictionsError(f"predictions of classes {preds.class_names[:3]}... do not match the ground truth's")
    stored_ids = [ground_truth.video_ids[i] if i < len(ground_truth.video_ids) else None for i in preds.video_index]
    if stored_ids != preds.video_ids:
        raise PredictionsError("the predictions were made for other videos than this ground truth's (its test split's)")


def _batches(preds: Predictions, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The stored videos in batches, as a test step hands them to the evaluator: index, video
    scores, CAS padded to the longest video, lengths, scale."""
    for first in range(0, len(preds.video_ids), batch_size):
        videos = range(first, min(first + batch_size, len(preds.video_ids)))
        lengths = np.array([preds.offsets[v + 1] - preds.offsets[v] for v in videos])
        cas = np.zeros((len(videos), lengths.max(), preds.cas.shape[1]), np.float32)
        for b, v in enumerate(videos):
            cas[b, : lengths[b]] = preds.video_cas(v)
        yield (torch.from_numpy(preds.video_index[first : first + len(videos)]),
               torch.from_numpy(preds.video_scores[first : first + len(videos)]), torch.from_numpy(cas),
               torch.from_numpy(lengths), torch.from_numpy(preds.scale[first : first + len(videos)]))
