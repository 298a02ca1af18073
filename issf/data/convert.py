"""Converters from public feature formats into the project's HDF5 feature file (``prepare``).

Two sources are supported:

* :func:`convert_wtalc`: a W-TALC folder (``<name>-I3D-JOINTFeatures.npy`` plus ``videoname.npy``,
  ``subset.npy``, ``duration.npy``, ``classlist.npy``, ``labels_all.npy``, ``segments.npy``,
  ``labels.npy`` and optionally ``Ambiguous_test.txt``), as read by the W-TALC/RSKP/ISSF code.
  Both the THUMOS'14 variant (byte strings) and the ActivityNet 1.3 variant (str) are read.
* :func:`convert_per_video`: one ``<video_id>.npy`` per video (or ``rgb/`` + ``flow/`` folders,
  concatenated along the feature axis) plus an ActivityNet-layout JSON or a BaS-Net/UM
  ``gt.json``, optionally restricted by split lists.

Everything that can be checked without features (files present, ids unique, labels known,
segments well formed) is checked before any feature is read. Features are then streamed video by
video into :func:`issf.data.h5.write_feature_file`, which writes a temporary file and renames it
only when complete, so an error never leaves an output or a temporary file behind. Warnings are
collected in the returned :class:`ConversionReport` and stored in the file's ``prepare`` attribute.

Defect policy (see :mod:`issf.data.validate` for the checks):

* segments outside [0, duration] are clipped and reported; a segment starting at or after the end
  is kept as the zero-length ``[duration, duration]`` by default (``past_end="keep"``): instance
  counts and the mAP denominator stay those of the source, where such a segment can never be
  matched. ``past_end="drop"`` removes it instead.
* W-TALC video-level labels (``labels_all``) that disagree with the segment labels are reported;
  ``labels_from="video"`` keeps W-TALC's labels (what W-TALC/RSKP/ISSF train on),
  ``labels_from="segments"`` derives them from the segments.
* a feature length T differing from ``duration / snippet_seconds`` by more than
  ``length_tolerance`` snippets is reported.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from issf.data.h5 import VideoEntry, write_feature_file
from issf.data.npy import load_npy
from issf.data.validate import (
    ConversionReport,
    PrepareError,
    PrepareFileNotFoundError,
    PrepareWarning,
    check_features,
    clip_intervals,
    empty_interval_warning,
    parse_intervals,
    short_repr,
)

SNIPPET_SECONDS = 16 / 25
WTALC_FILES = ("videoname", "subset", "duration", "classlist", "labels_all", "segments", "labels")
THUMOS_SUBSETS = {"validation": "train", "test": "test"}
ACTIVITYNET_SUBSETS = {"training": "train", "validation": "test"}
_MAX_IDS_IN_ATTRS = 100  # HDF5 attributes must stay well below 64 KiB

__all__ = [
    "ACTIVITYNET_SUBSETS",
    "THUMOS_SUBSETS",
    "ConversionReport",
    "PrepareError",
    "PrepareFileNotFoundError",
    "PrepareWarning",
    "convert_per_video",
    "convert_wtalc",
    "prepare_from_config",
]


@dataclass
class _Video:
    """Validated annotation of one video, waiting for its features."""

    video_id: str
    subset: str  # output subset
    duration: float | None  # None: taken as T * snippet_seconds
    segments: np.ndarray  # [S, 2]
    segment_labels: np.ndarray  # [S] class indices
    labels: np.ndarray  # [C] multi-hot
    key: Any = None  # where the converter finds the features


_Part = tuple[np.ndarray, Path, str]  # features, file, field


# ----------------------------------------------------------------------------------------------
# small helpers


def _text(x: Any, *, file: str | os.PathLike, field: str, video: str | None = None, what: str = "") -> str:
    """A string entry: str, or UTF-8 bytes (numpy's str_/bytes_ included); anything else is an error."""
    if isinstance(x, str):
        return str(x)
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PrepareError(f"{what}not valid UTF-8 ({exc.reason} at byte {exc.start}): {short_repr(x)}",
                               file=file, video=video, field=field) from None
    raise PrepareError(f"{what}expected a string, got {type(x).__name__} {short_repr(x)}",
                       file=file, video=video, field=field)


def _names(x: Any, *, file: Path, video: str, field: str) -> list[str]:
    """A label entry: one name or a list of names."""
    if isinstance(x, (str, bytes)):
        return [_text(x, file=file, video=video, field=field)]
    if not (isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim == 1)):
        raise PrepareError(f"expected a class name or a list of class names, got {type(x).__name__} {short_repr(x)}",
                           file=file, video=video, field=field)
    return [_text(v, file=file, video=video, field=field, what=f"entry {j}: ") for j, v in enumerate(x)]


def _sized(x: np.ndarray, *, file: Path, field: str, per: str = "video") -> np.ndarray:
    """An array with one entry per video (or class): at least 1-D."""
    if x.ndim == 0:
        raise PrepareError(f"expected one entry per {per}, got a 0-d array: {short_repr(x)}", file=file,
                           field=field)
    return x


def _durations(raw: np.ndarray, ids: list[str], file: Path) -> np.ndarray:
    """The first number of each video's entry (W-TALC stores [N, 1])."""
    out = np.empty(len(ids), dtype=np.float64)
    for i, vid in enumerate(ids):
        try:
            out[i] = np.asarray(raw[i], dtype=np.float64).reshape(-1)[0]
        except (TypeError, ValueError, IndexError):
            raise PrepareError(f"expected a number, got {short_repr(raw[i])}", file=file, video=vid,
                               field="duration") from None
    return out


def _stat(path: Path, *, field: str, video: str | None = None, hint: str = "") -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PrepareFileNotFoundError("file not found" + hint, file=path, video=video, field=field) from None
    if not path.is_file():
        raise PrepareFileNotFoundError("not a file" + hint, file=path, video=video, field=field)
    return st


def _describe(path: Path, *, digest: bool) -> dict[str, Any]:
    """Provenance of one source file (sha256 only for small annotation files)."""
    st = path.stat()
    info: dict[str, Any] = {"path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime}
    if digest:
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return info


def _append(warnings: list[PrepareWarning], warning: PrepareWarning | None) -> None:
    if warning is not None:
        warnings.append(warning)


def _check_unique(ids: Sequence[str], *, file: Path, field: str) -> None:
    seen: set[str] = set()
    for i, vid in enumerate(ids):
        if vid in seen:
            raise PrepareError(f"duplicate id (second occurrence at entry {i})", file=file, video=vid, field=field)
        seen.add(vid)


def _label_key(label: str) -> str:
    return "".join(ch for ch in label.lower() if ch.isalnum())


def _check_no_near_duplicates(classes: list[str], database: Mapping[str, Any], *, file: Path) -> None:
    """Labels equal up to case, spaces, ``_`` and ``-`` are one class misspelt: name both spellings
    and a video using the rarer one."""
    groups: dict[str, list[str]] = {}
    for c in classes:
        groups.setdefault(_label_key(c), []).append(c)
    for names in groups.values():
        if len(names) > 1:
            uses = Counter(str(a.get("label")) for rec in database.values() for a in rec.get("annotations", []))
            rare = min(names, key=lambda n: uses[n])
            video = next(v for v, rec in database.items() if any(str(a.get("label")) == rare
                                                                 for a in rec.get("annotations", [])))
            raise PrepareError(
                f"labels {', '.join(repr(n) for n in names)} differ only in case/spacing "
                f"({', '.join(str(uses[n]) for n in names)} uses): one class misspelt? Fix the annotation, "
                f"pass a class list (class_names=...), or allow_similar_labels=true to keep them apart",
                file=file, video=video, field="annotations.label")


def _class_indices(names: list[str], index: Mapping[str, int], *, file: Path, video: str, field: str) -> np.ndarray:
    for name in names:
        if name not in index:
            raise PrepareError(f"label {name!r} is not in the class list ({len(index)} classes)",
                               file=file, video=video, field=field)
    return np.asarray([index[n] for n in names], dtype=np.int64)


def _multi_hot(indices: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.zeros(num_classes, dtype=np.uint8)
    labels[indices] = 1
    return labels


def _check_output(out_path: Path, overwrite: bool) -> None:
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (task option `overwrite=true`) to replace it")


def _read_ambiguous(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``video start end`` per line (any whitespace; the official code splits on single spaces)."""
    rows: dict[str, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise PrepareError(f"line {n}: expected 'video start end', got {line.strip()!r}",
                                   file=path, video=fields[0], field="ambiguous")
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                raise PrepareError(f"line {n}: start/end are not numbers: {line.strip()!r}",
                                   file=path, video=fields[0], field="ambiguous") from None
            if not (np.isfinite(start) and np.isfinite(end)) or end < start:
                raise PrepareError(f"line {n}: invalid interval [{start}, {end}]",
                                   file=path, video=fields[0], field="ambiguous")
            rows.setdefault(fields[0], []).append((start, end))
    return rows


def _options_check(*, dtype: str, past_end: str) -> None:
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if past_end not in ("keep", "drop"):
        raise ValueError(f"past_end must be 'keep' or 'drop', got {past_end!r}")


# ----------------------------------------------------------------------------------------------
# the shared streaming core


def _stream_to_file(
    videos: list[_Video],
    load: Callable[[_Video], list[_Part]],
    *,
    out_path: Path,
    classes: list[str],
    source: dict[str, Any],
    ambiguous: Mapping[str, list[tuple[float, float]]],
    ambiguous_file: Path | None,
    annotation_file: Path,
    snippet_seconds: float,
    dtype: str,
    overwrite: bool,
    feature_dim: int | None,
    feature_name: str,
    past_end: str,
    length_tolerance: float | None,
    warnings: list[PrepareWarning],
    notes: list[str],
    skipped: dict[str, int],
    options: dict[str, Any],
) -> ConversionReport:
    """Validate features while streaming them into the writer; return the report."""
    if not videos:
        raise PrepareError("no videos selected for conversion (check subset_map / splits)", file=annotation_file)
    converted = {v.video_id for v in videos}
    for vid, rows in ambiguous.items():
        if vid not in converted:
            warnings.append(PrepareWarning("ambiguous_unknown_video", str(ambiguous_file), vid, "ambiguous",
                                           f"{len(rows)} rows for a video that is not converted: ignored"))
    n_videos: Counter[str] = Counter()
    n_segments: Counter[str] = Counter()
    totals = Counter()
    attrs: dict[str, Any] = {}
    dim_ref = (feature_dim, f"feature_dim={feature_dim}") if feature_dim is not None else None

    def entries() -> Iterator[VideoEntry]:
        nonlocal dim_ref
        for v in videos:
            got = load(v)
            parts = [check_features(x, file=file, video=v.video_id, fld=fld, dtype=dtype) for x, file, fld in got]
            x = parts[0] if len(parts) == 1 else _concat(parts, got, v.video_id, warnings)
            files = " + ".join(str(file) for _, file, _ in got)
            if dim_ref is None:
                dim_ref = (x.shape[1], f"dim of video {v.video_id}, the first converted")
            elif x.shape[1] != dim_ref[0]:
                raise PrepareError(f"feature dim {x.shape[1]} differs from {dim_ref[0]} ({dim_ref[1]})",
                                   file=files, video=v.video_id, field="features")
            n_snip = x.shape[0]
            duration = v.duration if v.duration is not None else n_snip * snippet_seconds
            if v.duration is not None and length_tolerance is not None:
                expected = v.duration / snippet_seconds
                if abs(n_snip - expected) > length_tolerance:
                    warnings.append(PrepareWarning(
                        "length_mismatch", files, v.video_id, "features",
                        f"{n_snip} snippets, but duration {v.duration:.3f} s / {snippet_seconds:g} s = "
                        f"{expected:.1f} (tolerance {length_tolerance:g})"))
            segs, keep, n_out, n_past, w = clip_intervals(v.segments, duration, past_end=past_end,
                                                          file=annotation_file, video=v.video_id,
                                                          fld="segments", kind="segment_outside")
            _append(warnings, w)
            totals["clipped"] += n_out
            totals["past_end"] += n_past
            amb = np.asarray(ambiguous.get(v.video_id, []), dtype=np.float64).reshape(-1, 2)
            amb, _, _, _, w = clip_intervals(amb, duration, past_end="drop", file=str(ambiguous_file),
                                             video=v.video_id, fld="ambiguous", kind="ambiguous_outside")
            _append(warnings, w)
            n_videos[v.subset] += 1
            n_segments[v.subset] += len(segs)
            totals["ambiguous"] += len(amb)
            totals["snippets"] += n_snip
            yield VideoEntry(video_id=v.video_id, subset=v.subset, duration=duration, features=x,
                             labels=v.labels, segments=segs, segment_labels=v.segment_labels[keep],
                             ambiguous=amb)
        # write_feature_file stores extra_attrs after it has consumed this stream, so the
        # summary filled in here (warnings found while streaming included) reaches the file.
        attrs["prepare"] = _attrs_summary(options, warnings, totals, dict(n_videos), dict(n_segments), skipped)

    path = write_feature_file(out_path, entries(), classes, snippet_seconds=snippet_seconds,
                              feature_name=feature_name, source=source, dtype=dtype,
                              overwrite=overwrite, extra_attrs=attrs)
    with h5py.File(path, "r") as f:
        checksum = str(f.attrs["checksum"])
        dim = int(f.attrs["feature_dim"])
    return ConversionReport(
        path=path, checksum=checksum, source_format=source["format"], classes=list(classes),
        feature_dim=dim, dtype=dtype, videos=dict(n_videos), segments=dict(n_segments),
        ambiguous=totals["ambiguous"], snippets=totals["snippets"], segments_clipped=totals["clipped"],
        segments_past_end=totals["past_end"], skipped=dict(skipped), warnings=warnings, notes=notes,
    )


def _concat(parts: list[np.ndarray], got: list[_Part], video: str, warnings: list[PrepareWarning]) -> np.ndarray:
    """Concatenate streams (rgb, flow) along the feature axis, cutting them to the shortest."""
    lengths = [len(x) for x in parts]
    n = min(lengths)
    if len(set(lengths)) > 1:
        files = " + ".join(str(file) for _, file, _ in got)
        warnings.append(PrepareWarning("stream_length", files, video, "features",
                                       f"stream lengths {lengths} differ: cut to {n} snippets"))
    return np.concatenate([np.asarray(x[:n]) for x in parts], axis=1)


def _attrs_summary(options: dict[str, Any], warnings: list[PrepareWarning], totals: Counter,
                   videos: dict[str, int], segments: dict[str, int], skipped: dict[str, int]) -> dict[str, Any]:
    """Compact record of the conversion for the file's ``prepare`` attribute."""
    by_kind: dict[str, list[str]] = {}
    for w in warnings:
        by_kind.setdefault(w.kind, []).append(w.video)
    return {
        "options": options,
        "videos": videos,
        "segments": segments,
        "skipped": skipped,
        "segments_clipped": totals["clipped"],
        "segments_past_end": totals["past_end"],
        "warnings": {k: len(v) for k, v in sorted(by_kind.items())},
        "warned_videos": {k: sorted(set(v))[:_MAX_IDS_IN_ATTRS] for k, v in sorted(by_kind.items())},
    }


# ----------------------------------------------------------------------------------------------
# W-TALC folders


def _default_subset_map(names: set[str], file: Path) -> dict[str, str]:
    if names <= set(THUMOS_SUBSETS):
        return dict(THUMOS_SUBSETS)
    if names <= {"training", "validation", "testing"}:
        return dict(ACTIVITYNET_SUBSETS)
    raise PrepareError(f"cannot infer subset_map for subsets {sorted(names)}; pass subset_map=",
                       file=file, field="subset")


def convert_wtalc(
    folder: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    name: str | None = None,
    feature_file: str | os.PathLike | None = None,
    ambiguous_file: str | os.PathLike | None = None,
    subset_map: Mapping[str, str] | None = None,
    labels_from: str = "video",
    snippet_seconds: float = SNIPPET_SECONDS,
    dtype: str = "float32",
    overwrite: bool = False,
    feature_dim: int | None = None,
    feature_name: str | None = None,
    past_end: str = "keep",
    length_tolerance: float | None = 3.0,
) -> ConversionReport:
    """Convert a W-TALC folder into a feature file at ``out_path``.

    ``name`` defaults to the folder name without a trailing ``-Annotations``; ``feature_file``
    to ``<folder>/<name>-I3D-JOINTFeatures.npy`` and ``ambiguous_file`` to
    ``<folder>/Ambiguous_test.txt`` when present. ``subset_map`` maps the file's subsets to the
    output's (default: THUMOS ``validation->train, test->test`` or ActivityNet
    ``training->train, validation->test``, chosen by the subset names); unmapped videos are
    skipped and counted. The feature file is one pickled object array, so it is loaded whole.
    Object arrays are unpickled by :func:`issf.data.npy.load_npy`, which never runs code from them.
    """
    _options_check(dtype=dtype, past_end=past_end)
    if labels_from not in ("video", "segments"):
        raise ValueError(f"labels_from must be 'video' or 'segments', got {labels_from!r}")
    folder, out_path = Path(folder), Path(out_path)
    name = name or folder.name.removesuffix("-Annotations")
    paths = {k: folder / f"{k}.npy" for k in WTALC_FILES}
    paths["features"] = Path(feature_file) if feature_file else folder / f"{name}-I3D-JOINTFeatures.npy"
    for role, p in paths.items():
        _stat(p, field=role, hint=" (pass feature_file=)" if role == "features" else "")
    if ambiguous_file is not None:
        amb_path: Path | None = Path(ambiguous_file)
        _stat(amb_path, field="ambiguous")
    else:
        amb_path = folder / "Ambiguous_test.txt" if (folder / "Ambiguous_test.txt").is_file() else None
    _check_output(out_path, overwrite)

    ann = {k: _sized(load_npy(paths[k], field=k), file=paths[k], field=k) for k in WTALC_FILES}
    ids = [_text(v, file=paths["videoname"], field=f"videoname[{i}]") for i, v in enumerate(ann["videoname"])]
    n = len(ids)
    for k in ("subset", "duration", "labels_all", "segments", "labels"):
        if len(ann[k]) != n:
            raise PrepareError(f"{len(ann[k])} entries, but videoname.npy has {n}", file=paths[k], field=k)
    _check_unique(ids, file=paths["videoname"], field="videoname")
    classes = [_text(c, file=paths["classlist"], field=f"classlist[{i}]") for i, c in enumerate(ann["classlist"])]
    _check_unique(classes, file=paths["classlist"], field="classlist")
    class_index = {c: i for i, c in enumerate(classes)}
    subsets = [_text(s, file=paths["subset"], video=vid, field="subset") for s, vid in zip(ann["subset"], ids)]
    mapping = dict(subset_map) if subset_map is not None else _default_subset_map(set(subsets), paths["subset"])
    durations = _durations(ann["duration"], ids, paths["duration"])

    warnings: list[PrepareWarning] = []
    skipped: Counter[str] = Counter()
    videos: list[_Video] = []
    for i, vid in enumerate(ids):
        if subsets[i] not in mapping:
            skipped[subsets[i]] += 1
            continue
        if not (np.isfinite(durations[i]) and durations[i] > 0):
            raise PrepareError(f"duration must be a positive number, got {durations[i]}",
                               file=paths["duration"], video=vid, field="duration")
        segs = parse_intervals(ann["segments"][i], file=paths["segments"], video=vid, fld="segments")
        _append(warnings, empty_interval_warning(segs, file=paths["segments"], video=vid, fld="segments"))
        seg_names = _names(ann["labels"][i], file=paths["labels"], video=vid, field="labels")
        if len(seg_names) != len(segs):
            raise PrepareError(f"{len(seg_names)} segment labels for {len(segs)} segments in segments.npy",
                               file=paths["labels"], video=vid, field="labels")
        seg_idx = _class_indices(seg_names, class_index, file=paths["labels"], video=vid, field="labels")
        video_names = _names(ann["labels_all"][i], file=paths["labels_all"], video=vid, field="labels_all")
        video_idx = _class_indices(video_names, class_index, file=paths["labels_all"], video=vid, field="labels_all")
        if set(video_idx.tolist()) != set(seg_idx.tolist()):
            kept = "labels_all" if labels_from == "video" else "segment labels"
            warnings.append(PrepareWarning(
                "labels_disagree", str(paths["labels_all"]), vid, "labels_all",
                f"labels_all={sorted(set(video_names))} but segment labels={sorted(set(seg_names))}; "
                f"kept {kept}"))
        labels = _multi_hot(video_idx if labels_from == "video" else seg_idx, len(classes))
        videos.append(_Video(vid, mapping[subsets[i]], float(durations[i]), segs, seg_idx, labels, key=i))
    ambiguous = _read_ambiguous(amb_path) if amb_path is not None else {}

    feats = _sized(load_npy(paths["features"], field="features"), file=paths["features"], field="features")
    if len(feats) != n:
        raise PrepareError(f"{len(feats)} feature arrays, but videoname.npy has {n} videos",
                           file=paths["features"], field="features")
    notes = [f"W-TALC features are one pickled object array: loaded whole "
             f"({paths['features'].stat().st_size / 2**20:.0f} MiB on disk) before streaming"]

    def load(v: _Video) -> list[_Part]:
        try:
            x = np.asarray(feats[v.key])
        except (TypeError, ValueError) as exc:  # e.g. ragged nested lists
            raise PrepareError(f"not a numeric array ({exc})", file=paths["features"], video=v.video_id,
                               field=f"features[{v.key}]") from None
        if feats.dtype == object:
            feats[v.key] = None  # release each video once it has been handed to the writer
        return [(x, paths["features"], f"features[{v.key}]")]

    files = {k: _describe(p, digest=k != "features") for k, p in paths.items()}
    if amb_path is not None:
        files["ambiguous"] = _describe(amb_path, digest=True)
    options = {"subset_map": mapping, "labels_from": labels_from, "past_end": past_end,
               "length_tolerance": length_tolerance}
    return _stream_to_file(
        videos, load, out_path=out_path, classes=classes, source={"format": "wtalc", "files": files},
        ambiguous=ambiguous, ambiguous_file=amb_path, annotation_file=paths["segments"],
        snippet_seconds=snippet_seconds, dtype=dtype, overwrite=overwrite, feature_dim=feature_dim,
        feature_name=feature_name or f"{name}-I3D-JOINT", past_end=past_end,
        length_tolerance=length_tolerance, warnings=warnings, notes=notes, skipped=dict(skipped),
        options=options,
    )


# ----------------------------------------------------------------------------------------------
# per-video feature folders with a JSON annotation file


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
    _stat(path, field="split list")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    _check_unique(ids, file=path, field="split list")
    return ids


def _read_class_names(class_names: Sequence[str] | str | os.PathLike) -> list[str]:
    if isinstance(class_names, (str, os.PathLike)):
        path = Path(class_names)
        _stat(path, field="class_names")
        if path.suffix == ".npy":
            names = _sized(load_npy(path, field="class_names"), file=path, field="class_names", per="class")
            return [_text(c, file=path, field=f"class_names[{i}]") for i, c in enumerate(names)]
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
    snippet_seconds: float = SNIPPET_SECONDS,
    dtype: str = "float32",
    overwrite: bool = False,
    feature_dim: int | None = None,
    feature_name: str | None = None,
    past_end: str = "keep",
    length_tolerance: float | None = 3.0,
    allow_similar_labels: bool = False,
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
    _options_check(dtype=dtype, past_end=past_end)
    if annotation_format not in ("activitynet", "basnet"):
        raise ValueError(f"annotation_format must be 'activitynet' or 'basnet', got {annotation_format!r}")
    if splits is not None and subset_map is not None:
        raise ValueError("pass splits or subset_map, not both (split lists already name the output subsets)")
    feature_dir, annotation_file, out_path = Path(feature_dir), Path(annotation_file), Path(out_path)
    if not feature_dir.is_dir():
        raise PrepareFileNotFoundError("feature folder not found", file=feature_dir, field="feature_dir")
    _stat(annotation_file, field="annotation_file")
    amb_path = Path(ambiguous_file) if ambiguous_file is not None else None
    if amb_path is not None:
        _stat(amb_path, field="ambiguous")
    _check_output(out_path, overwrite)
    database = _read_json_database(annotation_file)

    # which videos, in which output subset
    skipped: Counter[str] = Counter()
    selected: list[tuple[str, str]] = []
    files: dict[str, Any] = {"annotation": _describe(annotation_file, digest=True)}
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
            files[f"split:{subset}"] = _describe(split_path, digest=True)
    else:
        for vid, rec in database.items():
            if "subset" not in rec:
                raise PrepareError("record has no 'subset'; pass splits=", file=annotation_file, video=vid,
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
        _check_unique(classes, file=class_names if is_file else "class_names argument", field="class_names")
    else:
        classes = sorted({str(a.get("label")) for rec in database.values() for a in rec.get("annotations", [])})
        if not allow_similar_labels:
            _check_no_near_duplicates(classes, database, file=annotation_file)
    class_index = {c: i for i, c in enumerate(classes)}

    notes: list[str] = []
    warnings: list[PrepareWarning] = []
    videos: list[_Video] = []
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
        _append(warnings, empty_interval_warning(segs, file=annotation_file, video=vid, fld="annotations[].segment"))
        seg_idx = np.asarray([_class_indices([str(a["label"])], class_index, file=annotation_file, video=vid,
                                             field=f"annotations[{j}].label")[0] for j, a in enumerate(anns)],
                             dtype=np.int64)
        duration: float | None
        if durations is not None and vid in durations:
            duration = float(durations[vid])
        elif annotation_format == "activitynet":
            raw = rec.get("duration", rec.get("duration_second"))
            if raw is None:
                raise PrepareError("no 'duration' (or 'duration_second'); pass durations=",
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
        videos.append(_Video(vid, subset, duration, segs, seg_idx, _multi_hot(seg_idx, len(classes))))
    if estimated:
        notes.append(f"{estimated} videos have no duration in {annotation_file.name}: "
                     f"taken as T * {snippet_seconds:g} s (pass durations= for exact values)")
    notes.append("video-level labels derived from the segment labels")

    # every feature file must exist before anything is written
    streams = ["rgb", "flow"] if rgb_flow else [""]
    feature_paths: dict[str, list[Path]] = {}
    n_bytes, latest = 0, 0.0
    for v in videos:
        feature_paths[v.video_id] = [feature_dir / s / file_pattern.format(video_id=v.video_id) for s in streams]
        for p in feature_paths[v.video_id]:
            st = _stat(p, field="features", video=v.video_id)
            n_bytes, latest = n_bytes + st.st_size, max(latest, st.st_mtime)
    files["features"] = {"path": str(feature_dir.resolve()), "pattern": file_pattern, "streams": streams,
                         "files": len(videos) * len(streams), "bytes": n_bytes, "latest_mtime": latest}
    if amb_path is not None:
        files["ambiguous"] = _describe(amb_path, digest=True)
    ambiguous = _read_ambiguous(amb_path) if amb_path is not None else {}

    def load(v: _Video) -> list[_Part]:
        return [(load_npy(p, field="features", mmap=True), p, "features") for p in feature_paths[v.video_id]]

    options = {"annotation_format": annotation_format, "splits": {k: str(p) for k, p in (splits or {}).items()},
               "subset_map": dict(subset_map) if subset_map is not None else None, "rgb_flow": rgb_flow,
               "past_end": past_end, "length_tolerance": length_tolerance}
    name = feature_name or (feature_dir.name + ("-rgb+flow" if rgb_flow else ""))
    return _stream_to_file(
        videos, load, out_path=out_path, classes=classes, source={"format": f"per-video/{annotation_format}",
                                                                  "files": files},
        ambiguous=ambiguous, ambiguous_file=amb_path, annotation_file=annotation_file,
        snippet_seconds=snippet_seconds, dtype=dtype, overwrite=overwrite, feature_dim=feature_dim,
        feature_name=name, past_end=past_end, length_tolerance=length_tolerance, warnings=warnings,
        notes=notes, skipped=dict(skipped), options=options,
    )


# ----------------------------------------------------------------------------------------------
# entry point for `run.py task=prepare`

CONVERTERS: dict[str, Callable[..., ConversionReport]] = {"wtalc": convert_wtalc, "per_video": convert_per_video}


def prepare_from_config(cfg: Mapping[str, Any], out_path: str | os.PathLike) -> ConversionReport:
    """Run the converter named by ``cfg["format"]`` (``wtalc`` | ``per_video``) with the other keys.

    Keys are the converter's keyword arguments (plain values, e.g. a resolved ``data.prepare``
    config section); null values count as unset; an unknown key is an error that lists the
    accepted ones.
    """
    # null options count as unset (a config can keep every key of both formats with null values)
    options = {k: v for k, v in cfg.items() if v is not None}
    fmt = options.pop("format", None)
    if fmt not in CONVERTERS:
        raise ValueError(f"prepare: format must be one of {sorted(CONVERTERS)}, got {fmt!r}")
    fn = CONVERTERS[fmt]
    accepted = [p for p in inspect.signature(fn).parameters if p != "out_path"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"prepare: unknown option(s) {unknown} for format {fmt!r}; accepted: {accepted}")
    return fn(out_path=out_path, **options)
