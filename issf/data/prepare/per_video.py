"""Per-video feature folders (one ``<video_id>.npy`` per video, or ``rgb/`` + ``flow/``) with an
ActivityNet-layout JSON or a BaS-Net/UM ``gt.json`` -> the HDF5 feature file."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from issf.data.prepare.core import (
    Part,
    Video,
    WriterOptions,
    append_warning,
    check_no_near_duplicates,
    check_output,
    check_unique,
    class_indices,
    describe,
    multi_hot,
    read_ambiguous,
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
    empty_interval_warning,
    parse_intervals,
)


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _read_json_database(path: Path) -> dict[str, dict[str, Any]]:
    """``{"database": {vid: record}}`` (ActivityNet, BaS-Net/UM) or a bare ``{vid: record}`` (BSN)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as dup:
        raise PrepareError("key appears twice in one JSON object (duplicate video id?)",
                           file=path, video=str(dup), field="database") from None
    except json.JSONDecodeError as exc:
        raise PrepareError(f"not valid JSON ({exc})", file=path) from None
    database = data.get("database", data) if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise PrepareError("expected an object {video_id: {...}} under 'database'", file=path, field="database")
    for vid, rec in database.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("annotations", []), list):
            raise PrepareError("record must be an object with an 'annotations' list",
                               file=path, video=vid, field="annotations")
    return database


def _read_split(path: Path) -> list[str]:
    stat(path, field="split list")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    check_unique(ids, file=path, field="split list")
    return ids


def _read_class_names(class_names: Sequence[str] | str | os.PathLike) -> list[str]:
    if isinstance(class_names, (str, os.PathLike)):
        path = Path(class_names)
        stat(path, field="class_names")
        if path.suffix == ".npy":
            names = sized(load_npy(path, field="class_names"), file=path, field="class_names", per="class")
            return [text(c, file=path, field=f"class_names[{i}]") for i, c in enumerate(names)]
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [str(c) for c in class_names]


def convert_per_video(
    feature_dir: str | os.PathLike,
    annotation_file: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    annotation_format: str = "activitynet",
    rgb_flow: bool = False,
    splits: Mapping[str, str | os.PathLike] | None = None,
    subset_map: Mapping[str, str] | None = None,
    class_names: Sequence[str] | str | os.PathLike | None = None,
    durations: Mapping[str, float] | None = None,
    ambiguous_file: str | os.PathLike | None = None,
    file_pattern: str = "{video_id}.npy",
    allow_similar_labels: bool = False,
    writer: WriterOptions | None = None,
) -> ConversionReport:
    """Convert per-video ``.npy`` features plus a JSON annotation file into ``out_path``.

    ``annotation_format``: ``"activitynet"`` (``database -> video -> subset, duration,
    annotations[segment, label]``; a bare ``{video: record}`` and ``duration_second`` as in BSN are
    accepted) or ``"basnet"`` (BaS-Net/UM ``gt.json``: no durations, segments as strings; a
    duration is taken from ``durations`` or else T * ``snippet_seconds``).
    ``splits`` maps output subsets to text files of video ids (one per line) and then decides
    which videos are converted; otherwise each record's ``subset`` is mapped by ``subset_map``
    (identity by default; unmapped videos are skipped and counted). ``class_names`` (a list, or a
    ``.npy``/``.txt`` file) defaults to the sorted labels of the whole annotation file; labels that
    differ only in case, spaces, ``_`` or ``-`` (a misspelling splitting one class in two) are then
    an error unless ``allow_similar_labels``. Features
    are read one video at a time, memory-mapped: ``feature_dir/<file_pattern>`` or, with
    ``rgb_flow``, ``feature_dir/rgb/<file_pattern>`` and ``feature_dir/flow/<file_pattern>``
    concatenated (rgb first).
    """
    writer = writer or WriterOptions()
    snippet_seconds = writer.snippet_seconds
    if annotation_format not in ("activitynet", "basnet"):
        raise ValueError(f"data.prepare.annotation_format: must be activitynet or basnet, got {annotation_format!r}")
    if splits is not None and subset_map is not None:
        raise ValueError("data.prepare.splits and data.prepare.subset_map: set one, not both (split lists already "
                         "name the output subsets); drop one with ~data.prepare.subset_map")
    feature_dir, annotation_file, out_path = Path(feature_dir), Path(annotation_file), Path(out_path)
    if not feature_dir.is_dir():
        raise PrepareFileNotFoundError("feature folder not found", file=feature_dir, field="feature_dir")
    stat(annotation_file, field="annotation_file")
    amb_path = Path(ambiguous_file) if ambiguous_file is not None else None
    if amb_path is not None:
        stat(amb_path, field="ambiguous")
    check_output(out_path, writer.overwrite)
    database = _read_json_database(annotation_file)

    # which videos, in which output subset
    skipped: Counter[str] = Counter()
    selected: list[tuple[str, str]] = []
    files: dict[str, Any] = {"annotation": describe(annotation_file, digest=True)}
    if splits is not None:
        owner: dict[str, Path] = {}
        for subset, split_file in splits.items():
            split_path = Path(split_file)
            for vid in _read_split(split_path):
                if vid in owner:
                    raise PrepareError(f"also listed in {owner[vid]}", file=split_path, video=vid, field="split list")
                if vid not in database:
                    raise PrepareError(f"listed in the split but missing from {annotation_file}",
                                       file=split_path, video=vid, field="split list")
                owner[vid] = split_path
                selected.append((vid, subset))
            files[f"split:{subset}"] = describe(split_path, digest=True)
    else:
        for vid, rec in database.items():
            if "subset" not in rec:
                raise PrepareError("record has no 'subset'; set data.prepare.splits=", file=annotation_file, video=vid,
                                   field="subset")
            source_subset = str(rec["subset"])
            target = source_subset if subset_map is None else subset_map.get(source_subset)
            if target is None:
                skipped[source_subset] += 1
            else:
                selected.append((vid, target))

    if class_names is not None:
        classes = _read_class_names(class_names)
        is_file = isinstance(class_names, (str, os.PathLike))
        check_unique(classes, file=class_names if is_file else "class_names argument", field="class_names")
    else:
        classes = sorted({str(a.get("label")) for rec in database.values() for a in rec.get("annotations", [])})
        if not allow_similar_labels:
            check_no_near_duplicates(classes, database, file=annotation_file)
    class_index = {c: i for i, c in enumerate(classes)}

    notes: list[str] = []
    warnings: list[PrepareWarning] = []
    videos: list[Video] = []
    estimated = 0
    for vid, subset in selected:
        rec = database[vid]
        anns = rec.get("annotations", [])
        for j, a in enumerate(anns):
            if not isinstance(a, dict) or "segment" not in a or "label" not in a:
                raise PrepareError("annotation needs 'segment' and 'label'", file=annotation_file, video=vid,
                                   field=f"annotations[{j}]")
        segs = parse_intervals([a["segment"] for a in anns], file=annotation_file, video=vid,
                               fld="annotations[].segment")
        append_warning(warnings, empty_interval_warning(segs, file=annotation_file, video=vid, fld="annotations[].segment"))
        seg_idx = np.asarray([class_indices([str(a["label"])], class_index, file=annotation_file, video=vid,
                                             field=f"annotations[{j}].label")[0] for j, a in enumerate(anns)],
                             dtype=np.int64)
        duration: float | None
        if durations is not None and vid in durations:
            duration = float(durations[vid])
        elif annotation_format == "activitynet":
            raw = rec.get("duration", rec.get("duration_second"))
            if raw is None:
                raise PrepareError("no 'duration' (or 'duration_second'); set data.prepare.durations=",
                                   file=annotation_file, video=vid, field="duration")
            try:
                duration = float(raw)
            except (TypeError, ValueError):
                raise PrepareError(f"duration is not a number: {raw!r}", file=annotation_file, video=vid,
                                   field="duration") from None
        else:
            duration = None
            estimated += 1
        if duration is not None and not (np.isfinite(duration) and duration > 0):
            raise PrepareError(f"duration must be a positive number, got {duration}",
                               file=annotation_file if durations is None or vid not in durations else "durations argument",
                               video=vid, field="duration")
        videos.append(Video(vid, subset, duration, segs, seg_idx, multi_hot(seg_idx, len(classes))))
    if estimated:
        notes.append(f"{estimated} videos have no duration in {annotation_file.name}: "
                     f"taken as T * {snippet_seconds:g} s (set data.prepare.durations= for exact values)")
    notes.append("video-level labels derived from the segment labels")

    # every feature file must exist before anything is written
    streams = ["rgb", "flow"] if rgb_flow else [""]
    feature_paths: dict[str, list[Path]] = {}
    n_bytes, latest = 0, 0.0
    for v in videos:
        feature_paths[v.video_id] = [feature_dir / s / file_pattern.format(video_id=v.video_id) for s in streams]
        for p in feature_paths[v.video_id]:
            st = stat(p, field="features", video=v.video_id)
            n_bytes, latest = n_bytes + st.st_size, max(latest, st.st_mtime)
    files["features"] = {"path": str(feature_dir.resolve()), "pattern": file_pattern, "streams": streams,
                         "files": len(videos) * len(streams), "bytes": n_bytes, "latest_mtime": latest}
    if amb_path is not None:
        files["ambiguous"] = describe(amb_path, digest=True)
    ambiguous = read_ambiguous(amb_path) if amb_path is not None else {}

    def load(v: Video) -> list[Part]:
        return [(load_npy(p, field="features", mmap=True), p, "features") for p in feature_paths[v.video_id]]

    record = {"annotation_format": annotation_format, "splits": {k: str(p) for k, p in (splits or {}).items()},
              "subset_map": dict(subset_map) if subset_map is not None else None, "rgb_flow": rgb_flow}
    return stream_to_file(
        videos, load, out_path=out_path, classes=classes, source={"format": f"per-video/{annotation_format}",
                                                                  "files": files},
        ambiguous=ambiguous, ambiguous_file=amb_path, annotation_file=annotation_file, writer=writer,
        feature_name=feature_dir.name + ("-rgb+flow" if rgb_flow else ""), warnings=warnings,
        notes=notes, skipped=dict(skipped), record=record,
    )
