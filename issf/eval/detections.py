"""Detections files in the ActivityNet results JSON format.

::

    {"version": "VERSION 1.3",
     "results": {video_id: [{"label": class_name, "score": float, "segment": [t0, t1]}, ...]},
     "external_data": {...}}

Segments are in seconds. Files are written atomically; reading validates every entry and
reports problems with the file, the video and the field involved.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from issf.data.annotations import GroundTruth
from issf.utils.io import atomic_write

VERSION = "VERSION 1.3"



@dataclass
class Detections:
    """Flat detections of many videos: row i is ``[start[i], end[i])`` of class ``label[i]``.

    ``units`` is ``"snippets"`` (as produced by :func:`localize`) or ``"seconds"``.
    """

    video: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    start: np.ndarray = field(default_factory=lambda: np.zeros(0))
    end: np.ndarray = field(default_factory=lambda: np.zeros(0))
    label: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    units: str = "snippets"

    def __post_init__(self) -> None:
        self.video = np.asarray(self.video, dtype=np.int64).reshape(-1)
        self.start = np.asarray(self.start, dtype=np.float64).reshape(-1)
        self.end = np.asarray(self.end, dtype=np.float64).reshape(-1)
        self.label = np.asarray(self.label, dtype=np.int64).reshape(-1)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        n = len(self.video)
        if not (len(self.start) == len(self.end) == len(self.label) == len(self.score) == n):
            raise ValueError("Detections: video, start, end, label and score must have the same length")
        if self.units not in ("snippets", "seconds"):
            raise ValueError(f"Detections.units must be 'snippets' or 'seconds', got {self.units!r}")

    def __len__(self) -> int:
        return len(self.video)

    def select(self, index: np.ndarray | slice) -> Detections:
        """Rows picked by a boolean mask, an index array or a slice."""
        return Detections(
            self.video[index],
            self.start[index],
            self.end[index],
            self.label[index],
            self.score[index],
            self.units,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Detections], units: str | None = None) -> Detections:
        """All rows of ``parts`` in order (``units`` is required only when ``parts`` is empty)."""
        kinds = {p.units for p in parts}
        if len(kinds) > 1:
            raise ValueError(f"Detections.concatenate: mixed units {sorted(kinds)}")
        units = kinds.pop() if kinds else (units or "snippets")
        if not parts:
            return cls(units=units)
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("video", "start", "end", "label", "score")
            ),
            units=units,
        )

    def to_seconds(self, snippet_seconds: float, durations: np.ndarray | None = None) -> Detections:
        """Snippet units -> seconds; boundaries are clipped to ``[0, durations[video]]`` when given."""
        if self.units != "snippets":
            raise ValueError(f"Detections.to_seconds: detections are already in {self.units}")
        start = self.start * snippet_seconds
        end = self.end * snippet_seconds
        if durations is not None:
            dur = np.asarray(durations, dtype=np.float64)[self.video]
            start = np.clip(start, 0.0, dur)
            end = np.clip(end, 0.0, dur)
        return Detections(self.video.copy(), start, end, self.label.copy(), self.score.copy(), "seconds")


def save_detections(
    path: str | os.PathLike,
    detections: Detections,
    video_ids: Sequence[str],
    class_names: Sequence[str],
    external_data: dict[str, Any] | None = None,
) -> Path:
    """Write detections (in seconds) as an ActivityNet results file; returns the path.

    ``detections.video`` indexes ``video_ids`` and ``detections.label`` indexes ``class_names``.
    Every video of ``video_ids`` gets an entry (possibly empty), rows keep their order. The file is
    written to a temporary name and renamed into place, so a failure leaves no partial file.
    """
    path = Path(path)
    if detections.units != "seconds":
        raise ValueError(
            f"save_detections({path}): detections are in {detections.units}; call to_seconds first"
        )
    n_vid, n_cls = len(video_ids), len(class_names)
    if len(detections) and not (0 <= detections.video.min() and detections.video.max() < n_vid):
        raise ValueError(f"save_detections({path}): video index out of range for {n_vid} video ids")
    if len(detections) and not (0 <= detections.label.min() and detections.label.max() < n_cls):
        raise ValueError(f"save_detections({path}): label index out of range for {n_cls} class names")
    bad = ~(np.isfinite(detections.start) & np.isfinite(detections.end) & np.isfinite(detections.score))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"save_detections({path}): video {video_ids[detections.video[i]]!r}: non-finite detection"
        )

    results: dict[str, list[dict[str, Any]]] = {str(v): [] for v in video_ids}
    names = [str(c) for c in class_names]
    for v, s, e, c, sc in zip(
        detections.video.tolist(),
        detections.start.tolist(),
        detections.end.tolist(),
        detections.label.tolist(),
        detections.score.tolist(),
    ):
        results[video_ids[v]].append({"label": names[c], "score": sc, "segment": [s, e]})
    payload = {
        "version": VERSION,
        "results": results,
        "external_data": {"used": False, "details": ""} if external_data is None else external_data,
    }

    text = json.dumps(payload, allow_nan=False)
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_detections(path: str | os.PathLike, ground_truth: GroundTruth) -> Detections:
    """Read an ActivityNet results file into :class:`Detections` in seconds.

    Videos are indexed by ``ground_truth.video_ids`` and labels by ``ground_truth.class_names``.
    Raises ``ValueError`` naming the file, the video and the field for an unknown video or label,
    a missing key, a non-numeric or non-finite score, or a segment that is not two finite numbers
    with start <= end.
    """
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError(f"{path}: missing top-level key 'results'")
    results = data["results"]
    if not isinstance(results, dict):
        raise ValueError(f"{path}: 'results' must map video ids to lists of detections")

    video_index = ground_truth.video_index()
    class_index = {c: i for i, c in enumerate(ground_truth.class_names)}
    video, start, end, label, score = [], [], [], [], []
    for vid, entries in results.items():
        where = f"{path}: video {vid!r}"
        if vid not in video_index:
            raise ValueError(f"{where}: unknown video id (not in the ground truth)")
        if not isinstance(entries, list):
            raise ValueError(f"{where}: expected a list of detections")
        v = video_index[vid]
        for k, det in enumerate(entries):
            at = f"{where}, detection {k}"
            if not isinstance(det, dict):
                raise ValueError(f"{at}: expected an object with 'label', 'score', 'segment'")
            for key in ("label", "score", "segment"):
                if key not in det:
                    raise ValueError(f"{at}: missing field '{key}'")
            lab, sc, seg = det["label"], det["score"], det["segment"]
            if not isinstance(lab, str) or lab not in class_index:
                raise ValueError(f"{at}: field 'label': unknown label {lab!r}")
            if not _number(sc):
                raise ValueError(f"{at}: field 'score': not a number ({sc!r})")
            if not math.isfinite(sc):
                raise ValueError(f"{at}: field 'score': not finite ({sc!r})")
            if not (isinstance(seg, list) and len(seg) == 2 and all(_number(t) for t in seg)):
                raise ValueError(f"{at}: field 'segment': expected [start, end] numbers, got {seg!r}")
            if not (math.isfinite(seg[0]) and math.isfinite(seg[1])):
                raise ValueError(f"{at}: field 'segment': not finite ({seg!r})")
            if seg[0] > seg[1]:
                raise ValueError(f"{at}: field 'segment': start > end ({seg!r})")
            video.append(v)
            start.append(seg[0])
            end.append(seg[1])
            label.append(class_index[lab])
            score.append(sc)
    dets = Detections(video, start, end, label, score, units="seconds")
    _warn_about_coverage(path, dets, ground_truth, len(results))
    return dets


def _warn_about_coverage(path: Path, dets: Detections, ground_truth: GroundTruth, listed: int) -> None:
    """Warnings with counts for what the protocol accepts but a user should know: detections outside
    ``[0, duration]`` (the official evaluation scores them as they are), and a file that covers few
    of the ground truth's videos (the others count as missed)."""
    if len(dets):
        duration = ground_truth.durations[dets.video]
        outside = (dets.start < 0) | (dets.end > duration + 1e-6)
        if outside.any():
            warnings.warn(f"{path}: {int(outside.sum())} of {len(dets)} detections in "
                          f"{len(np.unique(dets.video[outside]))} videos reach outside [0, duration]; scored as "
                          f"they are, as the official evaluation does", UserWarning, stacklevel=3)
    with_gt = np.unique(ground_truth.segment_video)
    covered = np.isin(with_gt, dets.video).sum()
    if len(with_gt) and covered < 0.5 * len(with_gt):
        warnings.warn(f"{path}: detections for {covered} of the {len(with_gt)} annotated videos ({listed} videos "
                      f"listed); the others count as missed", UserWarning, stacklevel=3)
