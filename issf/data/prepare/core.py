"""The core of ``prepare``: the writer options, checks shared by the converters, and the streaming
writer that validates features while handing them to :func:`issf.data.h5.write_feature_file`.

The converters themselves are :mod:`issf.data.prepare.wtalc` and :mod:`issf.data.prepare.per_video`;
the checks, the defect policy and the report are :mod:`issf.data.prepare.validate`'s (the policy
is summarised in :mod:`issf.data.prepare`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from issf.data.h5 import VideoEntry, write_feature_file
from issf.data.prepare.validate import (
    ConversionReport,
    PrepareError,
    PrepareFileNotFoundError,
    PrepareWarning,
    check_features,
    clip_intervals,
    short_repr,
)
from issf.utils.io import remove_stale_temporaries

log = logging.getLogger(__name__)

SNIPPET_SECONDS = 16 / 25
_MAX_IDS_IN_ATTRS = 100  # HDF5 attributes must stay well below 64 KiB


@dataclass(frozen=True)
class WriterOptions:
    """How features are written, the same for every converter (``data.prepare.*`` keys).

    ``snippet_seconds``: seconds per feature row; ``dtype``: ``float32`` or ``float16`` (half the
    file); ``overwrite``: replace an existing output; ``feature_dim``: required feature dim (default:
    the first video's); ``feature_name``: stored name of the features (default: from the source);
    ``past_end``: ``keep`` a segment starting at or after the end as ``[duration, duration]`` or
    ``drop`` it; ``length_tolerance``: snippets a length may differ from duration / snippet_seconds
    before a warning (``None``: no check).
    """

    snippet_seconds: float = SNIPPET_SECONDS
    dtype: str = "float32"
    overwrite: bool = False
    feature_dim: int | None = None
    feature_name: str | None = None
    past_end: str = "keep"
    length_tolerance: float | None = 3.0

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"data.prepare.dtype: must be float16 or float32, got {self.dtype!r}")
        if self.past_end not in ("keep", "drop"):
            raise ValueError(f"data.prepare.past_end: must be keep or drop, got {self.past_end!r}")
        if not self.snippet_seconds > 0:
            raise ValueError(f"data.prepare.snippet_seconds: must be > 0, got {self.snippet_seconds!r}")

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(asdict(cls()))


@dataclass
class Video:
    """Validated annotation of one video, waiting for its features."""

    video_id: str
    subset: str  # output subset
    duration: float | None  # None: taken as T * snippet_seconds
    segments: np.ndarray  # [S, 2]
    segment_labels: np.ndarray  # [S] class indices
    labels: np.ndarray  # [C] multi-hot
    key: Any = None  # where the converter finds the features


Part = tuple[np.ndarray, Path, str]  # features, file, field



def text(x: Any, *, file: str | os.PathLike, field: str, video: str | None = None, what: str = "") -> str:
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


def names(x: Any, *, file: Path, video: str, field: str) -> list[str]:
    """A label entry: one name or a list of names."""
    if isinstance(x, (str, bytes)):
        return [text(x, file=file, video=video, field=field)]
    if not (isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim == 1)):
        raise PrepareError(f"expected a class name or a list of class names, got {type(x).__name__} {short_repr(x)}",
                           file=file, video=video, field=field)
    return [text(v, file=file, video=video, field=field, what=f"entry {j}: ") for j, v in enumerate(x)]


def sized(x: np.ndarray, *, file: Path, field: str, per: str = "video") -> np.ndarray:
    """An array with one entry per video (or class): at least 1-D."""
    if x.ndim == 0:
        raise PrepareError(f"expected one entry per {per}, got a 0-d array: {short_repr(x)}", file=file,
                           field=field)
    return x


def read_durations(raw: np.ndarray, ids: list[str], file: Path) -> np.ndarray:
    """The first number of each video's entry (W-TALC stores [N, 1])."""
    out = np.empty(len(ids), dtype=np.float64)
    for i, vid in enumerate(ids):
        try:
            out[i] = np.asarray(raw[i], dtype=np.float64).reshape(-1)[0]
        except (TypeError, ValueError, IndexError):
            raise PrepareError(f"expected a number, got {short_repr(raw[i])}", file=file, video=vid,
                               field="duration") from None
    return out


def stat(path: Path, *, field: str, video: str | None = None, hint: str = "") -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PrepareFileNotFoundError("file not found" + hint, file=path, video=video, field=field) from None
    if not path.is_file():
        raise PrepareFileNotFoundError("not a file" + hint, file=path, video=video, field=field)
    return st


def describe(path: Path, *, digest: bool) -> dict[str, Any]:
    """Provenance of one source file (sha256 only for small annotation files)."""
    st = path.stat()
    info: dict[str, Any] = {"path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime}
    if digest:
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return info


def append_warning(warnings: list[PrepareWarning], warning: PrepareWarning | None) -> None:
    if warning is not None:
        warnings.append(warning)


def check_unique(ids: Sequence[str], *, file: Path, field: str) -> None:
    seen: set[str] = set()
    for i, vid in enumerate(ids):
        if vid in seen:
            raise PrepareError(f"duplicate id (second occurrence at entry {i})", file=file, video=vid, field=field)
        seen.add(vid)


def _label_key(label: str) -> str:
    return "".join(ch for ch in label.lower() if ch.isalnum())


def check_no_near_duplicates(classes: list[str], database: Mapping[str, Any], *, file: Path) -> None:
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
                f"give the class list (+data.prepare.class_names=<file or [names]>), or add "
                f"+data.prepare.allow_similar_labels=true to keep them apart",
                file=file, video=video, field="annotations.label")


def class_indices(names: list[str], index: Mapping[str, int], *, file: Path, video: str, field: str) -> np.ndarray:
    for name in names:
        if name not in index:
            raise PrepareError(f"label {name!r} is not in the class list ({len(index)} classes)",
                               file=file, video=video, field=field)
    return np.asarray([index[n] for n in names], dtype=np.int64)


def multi_hot(indices: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.zeros(num_classes, dtype=np.uint8)
    labels[indices] = 1
    return labels


def check_output(out_path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; a killed prepare's temporary beside it goes
    either way (a refused prepare leaves no stale file behind)."""
    if out_path.parent.is_dir():
        for stale in remove_stale_temporaries(out_path.parent, out_path.name):
            log.warning(f"removed {stale}, left by an interrupted process")
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; add data.prepare.overwrite=true to replace it")


def read_ambiguous(path: Path) -> dict[str, list[tuple[float, float]]]:
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



def stream_to_file(
    videos: list[Video],
    load: Callable[[Video], list[Part]],
    *,
    out_path: Path,
    classes: list[str],
    source: dict[str, Any],
    ambiguous: Mapping[str, list[tuple[float, float]]],
    ambiguous_file: Path | None,
    annotation_file: Path,
    writer: WriterOptions,
    feature_name: str,
    warnings: list[PrepareWarning],
    notes: list[str],
    skipped: dict[str, int],
    record: dict[str, Any],
    labelled: bool = True,
) -> ConversionReport:
    """Validate features while streaming them into the writer; return the report. ``record`` is the
    converter's own options, stored in the file with the writer's; ``labelled=False`` writes a file
    marked as having no annotations (the videos' segments must then be empty)."""
    snippet_seconds, dtype, past_end = writer.snippet_seconds, writer.dtype, writer.past_end
    feature_dim, length_tolerance = writer.feature_dim, writer.length_tolerance
    options = {**record, "past_end": past_end, "length_tolerance": length_tolerance}
    if not videos:
        raise PrepareError("no videos selected for conversion (check data.prepare.subset_map / data.prepare.splits)",
                           file=annotation_file)
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
            append_warning(warnings, w)
            totals["clipped"] += n_out
            totals["past_end"] += n_past
            amb = np.asarray(ambiguous.get(v.video_id, []), dtype=np.float64).reshape(-1, 2)
            amb, _, _, _, w = clip_intervals(amb, duration, past_end="drop", file=str(ambiguous_file),
                                             video=v.video_id, fld="ambiguous", kind="ambiguous_outside")
            append_warning(warnings, w)
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
                              feature_name=writer.feature_name or feature_name, source=source, dtype=dtype,
                              overwrite=writer.overwrite, extra_attrs=attrs, labelled=labelled)
    with h5py.File(path, "r") as f:
        checksum = str(f.attrs["checksum"])
        dim = int(f.attrs["feature_dim"])
    return ConversionReport(
        path=path, checksum=checksum, source_format=source["format"], classes=list(classes),
        feature_dim=dim, dtype=dtype, videos=dict(n_videos), segments=dict(n_segments),
        ambiguous=totals["ambiguous"], snippets=totals["snippets"], segments_clipped=totals["clipped"],
        segments_past_end=totals["past_end"], skipped=dict(skipped), warnings=warnings, notes=notes,
        labelled=labelled,
    )


def _concat(parts: list[np.ndarray], got: list[Part], video: str, warnings: list[PrepareWarning]) -> np.ndarray:
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
