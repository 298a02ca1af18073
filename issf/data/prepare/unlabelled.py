"""Features without annotations -> an unlabelled feature file (``data.prepare.annotations=none``),
the input of ``task=predict``.

Two sources: a folder of per-video ``.npy`` files (one [T, D] array each, the file stem is the
video id; or ``rgb/`` + ``flow/`` folders), or a W-TALC features file whose annotation files are
missing or not wanted (video ids from ``videoname.npy`` and durations from ``duration.npy`` when
the folder has them). Every video goes into the one subset :data:`UNLABELLED_SUBSET`; the file
has no classes, labels or segments and is marked ``labelled = false``. Features are checked as in
the labelled conversions (numeric, 2-D, not empty, finite, one dimension for all videos, errors
naming file, video and field) and written atomically by the same streaming writer.

A video's duration (seconds; it bounds the detections) comes from ``durations`` (a mapping or a
JSON file ``{video_id: seconds}``), else from the source, else it is T * snippet_seconds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from issf.data.prepare.core import (
    Part,
    Video,
    WriterOptions,
    check_output,
    check_unique,
    describe,
    read_durations,
    sized,
    stat,
    stream_to_file,
    text,
)
from issf.data.prepare.npy import load_npy
from issf.data.prepare.validate import (
    ConversionReport,
    PrepareError,
    PrepareFileNotFoundError,
    PrepareWarning,
)
from issf.data.prepare.wtalc import features_path, video_loader

UNLABELLED_SUBSET = "unlabelled"
Durations = Mapping[str, float] | str | os.PathLike


def convert_unlabelled_per_video(
    feature_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    rgb_flow: bool = False,
    file_pattern: str = "{video_id}.npy",
    durations: Durations | None = None,
    writer: WriterOptions | None = None,
) -> ConversionReport:
    """Convert every ``feature_dir/<file_pattern>`` (or, with ``rgb_flow``, ``rgb/<file_pattern>``
    and ``flow/<file_pattern>`` concatenated, rgb first) into an unlabelled file at ``out_path``,
    videos sorted by id."""
    writer = writer or WriterOptions()
    feature_dir, out_path = Path(feature_dir), Path(out_path)
    if not feature_dir.is_dir():
        raise PrepareFileNotFoundError("feature folder not found", file=feature_dir, field="feature_dir")
    check_output(out_path, writer.overwrite)
    streams = ["rgb", "flow"] if rgb_flow else [""]
    listed = {s: _list_videos(feature_dir / s, file_pattern) for s in streams}
    ids = sorted(listed[streams[0]])
    for stream in streams[1:]:
        missing = sorted(set(ids) ^ set(listed[stream]))
        if missing:
            vid = missing[0]
            lacking = stream if vid in listed[streams[0]] else streams[0]
            raise PrepareFileNotFoundError(f"{len(missing)} video(s) have features in only one of {streams}",
                                           file=feature_dir / lacking / file_pattern.format(video_id=vid),
                                           video=vid, field="features")
    warnings: list[PrepareWarning] = []
    notes: list[str] = []
    known = _durations(durations, ids, warnings)
    videos = [Video(vid, UNLABELLED_SUBSET, known.get(vid), np.zeros((0, 2)), np.zeros(0, dtype=np.int64),
                    np.zeros(0, dtype=np.uint8), key=[listed[s][vid] for s in streams]) for vid in ids]
    _note_estimated(videos, notes, writer.snippet_seconds)
    files: dict[str, Any] = {"features": {"path": str(feature_dir.resolve()), "pattern": file_pattern,
                                          "streams": streams, "files": len(ids) * len(streams),
                                          "bytes": sum(p.stat().st_size for v in videos for p in v.key)}}
    if isinstance(durations, (str, os.PathLike)):
        files["durations"] = describe(Path(durations), digest=True)

    def load(v: Video) -> list[Part]:
        return [(load_npy(p, field="features", mmap=True), p, "features") for p in v.key]

    return stream_to_file(
        videos, load, out_path=out_path, classes=[], source={"format": "per-video/unlabelled", "files": files},
        ambiguous={}, ambiguous_file=None, annotation_file=feature_dir, writer=writer,
        feature_name=feature_dir.name + ("-rgb+flow" if rgb_flow else ""), warnings=warnings, notes=notes,
        skipped={}, record={"annotations": "none", "rgb_flow": rgb_flow, "file_pattern": file_pattern},
        labelled=False,
    )


def convert_unlabelled_wtalc(
    folder: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    name: str | None = None,
    feature_file: str | os.PathLike | None = None,
    durations: Durations | None = None,
    writer: WriterOptions | None = None,
) -> ConversionReport:
    """Convert a W-TALC features file (default ``<folder>/<name>-I3D-JOINTFeatures.npy``, ``name``
    the folder name without ``-Annotations``) into an unlabelled file at ``out_path``. Video ids
    come from ``<folder>/videoname.npy`` when present, else they are ``video_00000``, ``video_00001``,
    ... by position; durations from ``durations``, else ``<folder>/duration.npy`` when present."""
    writer = writer or WriterOptions()
    folder, out_path = Path(folder), Path(out_path)
    name, feature_path = features_path(folder, name, feature_file)
    stat(feature_path, field="features", hint=" (set data.prepare.feature_file=<file>)")
    check_output(out_path, writer.overwrite)
    files: dict[str, Any] = {"features": describe(feature_path, digest=False)}
    notes: list[str] = []
    feats = sized(load_npy(feature_path, field="features"), file=feature_path, field="features")
    names_path, duration_path = folder / "videoname.npy", folder / "duration.npy"
    if names_path.is_file():
        raw = sized(load_npy(names_path, field="videoname"), file=names_path, field="videoname")
        if len(raw) != len(feats):
            raise PrepareError(f"{len(raw)} entries, but the features file has {len(feats)} videos",
                               file=names_path, field="videoname")
        ids = [text(v, file=names_path, field=f"videoname[{i}]") for i, v in enumerate(raw)]
        check_unique(ids, file=names_path, field="videoname")
        files["videoname"] = describe(names_path, digest=True)
    else:
        ids = [f"video_{i:05d}" for i in range(len(feats))]
        notes.append(f"no {names_path.name} in {folder}: videos named video_00000... by their position in "
                     f"{feature_path.name}")
    warnings: list[PrepareWarning] = []
    known = _durations(durations, ids, warnings)
    if durations is None and duration_path.is_file():
        raw = sized(load_npy(duration_path, field="duration"), file=duration_path, field="duration")
        if len(raw) != len(ids):
            raise PrepareError(f"{len(raw)} entries, but the features file has {len(ids)} videos",
                               file=duration_path, field="duration")
        known = {vid: _positive(d, file=duration_path, video=vid, field="duration")
                 for vid, d in zip(ids, read_durations(raw, ids, duration_path))}
        files["duration"] = describe(duration_path, digest=True)
    videos = [Video(vid, UNLABELLED_SUBSET, known.get(vid), np.zeros((0, 2)), np.zeros(0, dtype=np.int64),
                    np.zeros(0, dtype=np.uint8), key=i) for i, vid in enumerate(ids)]
    _note_estimated(videos, notes, writer.snippet_seconds)
    if isinstance(durations, (str, os.PathLike)):
        files["durations"] = describe(Path(durations), digest=True)

    return stream_to_file(
        videos, video_loader(feats, feature_path), out_path=out_path, classes=[], source={"format": "wtalc/unlabelled", "files": files},
        ambiguous={}, ambiguous_file=None, annotation_file=feature_path, writer=writer,
        feature_name=f"{name}-I3D-JOINT", warnings=warnings, notes=notes, skipped={},
        record={"annotations": "none"}, labelled=False,
    )


def _list_videos(folder: Path, file_pattern: str) -> dict[str, Path]:
    """Video id -> feature file, for the files of ``folder`` that match ``file_pattern``."""
    if file_pattern.count("{video_id}") != 1:
        raise PrepareError(f"must contain {{video_id}} once, got {file_pattern!r}", file=folder, field="file_pattern")
    prefix, suffix = file_pattern.split("{video_id}")
    if not folder.is_dir():
        raise PrepareFileNotFoundError("feature folder not found", file=folder, field="feature_dir")
    found = {}
    for path in folder.glob(f"{prefix}*{suffix}"):
        relative = path.relative_to(folder).as_posix()
        video = relative[len(prefix): len(relative) - len(suffix)]
        if path.is_file() and video:
            found[video] = path
    if not found:
        raise PrepareFileNotFoundError(f"no feature file matches {file_pattern!r}", file=folder, field="feature_dir")
    return found


def _durations(durations: Durations | None, ids: list[str], warnings: list[PrepareWarning]) -> dict[str, float]:
    """The given durations (a mapping, or a JSON file of one), checked; entries for videos that are
    not converted are reported and ignored."""
    if durations is None:
        return {}
    where: str | Path = "durations argument"
    if isinstance(durations, (str, os.PathLike)):
        where = Path(durations)
        stat(where, field="durations")
        try:
            durations = json.loads(where.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PrepareError(f"not valid JSON ({exc})", file=where, field="durations") from None
        if not isinstance(durations, dict):
            raise PrepareError("expected an object {video_id: seconds}", file=where, field="durations")
    known = set(ids)
    unknown = sorted(str(v) for v in durations if str(v) not in known)
    if unknown:
        warnings.append(PrepareWarning("durations_unknown_video", str(where), unknown[0], "durations",
                                       f"{len(unknown)} entries for videos that are not converted: ignored"))
    return {str(v): _positive(d, file=where, video=str(v)) for v, d in durations.items() if str(v) in known}


def _positive(value: Any, *, file: str | os.PathLike, video: str, field: str = "durations") -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise PrepareError(f"expected a number of seconds, got {value!r}", file=file, video=video,
                           field=field) from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise PrepareError(f"duration must be a positive number, got {seconds}", file=file, video=video,
                           field=field)
    return seconds


def _note_estimated(videos: list[Video], notes: list[str], snippet_seconds: float) -> None:
    estimated = sum(v.duration is None for v in videos)
    if estimated:
        notes.append(f"{estimated} of {len(videos)} videos have no known duration: taken as T * {snippet_seconds:g} s "
                     f"(set data.prepare.durations=<JSON file {{video_id: seconds}}> for exact values)")
