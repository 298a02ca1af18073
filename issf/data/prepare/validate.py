"""Validation for `prepare`: errors that stop a conversion, warnings it reports, and its report.

Every error and warning names the file, the video and the field it is about, so a user can
find the bad value without reading the converter.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FLOAT16_MAX = float(np.finfo(np.float16).max)


def _where(file: str | os.PathLike | None, video: str | None, fld: str | None) -> str:
    parts = [str(file) if file is not None else None, f"video {video}" if video is not None else None, fld]
    return ": ".join(p for p in parts if p) + (": " if any(parts) else "")


class PrepareError(ValueError):
    """Invalid input to a conversion; ``file``, ``video`` and ``field`` say where."""

    def __init__(self, problem: str, *, file: str | os.PathLike | None, video: str | None = None,
                 field: str | None = None):
        self.file = None if file is None else str(file)
        self.video = video
        self.field = field
        self.problem = problem
        super().__init__(_where(file, video, field) + problem)


class PrepareFileNotFoundError(PrepareError, FileNotFoundError):
    """A source file that a conversion needs does not exist."""


@dataclass(frozen=True)
class PrepareWarning:
    """A defect that the conversion repaired or kept, reported but not fatal."""

    kind: str  # segment_outside | ambiguous_outside | empty_segment | labels_disagree | length_mismatch | ...
    file: str
    video: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {_where(self.file, self.video, self.field)}{self.message}"


@dataclass
class ConversionReport:
    """What a conversion wrote and what it found."""

    path: Path
    checksum: str
    source_format: str
    classes: list[str]
    feature_dim: int
    dtype: str
    videos: dict[str, int]  # output subset -> videos
    segments: dict[str, int]  # output subset -> segments
    ambiguous: int
    snippets: int
    segments_clipped: int = 0  # segments moved inside [0, duration] (includes those past the end)
    segments_past_end: int = 0  # segments starting at or after the end of their video
    skipped: dict[str, int] = field(default_factory=dict)  # source subset -> videos not converted
    warnings: list[PrepareWarning] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    labelled: bool = True  # False: features only (data.prepare.annotations=none), for task=predict

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def warned_videos(self, kind: str) -> set[str]:
        """Ids of the videos with a warning of this kind."""
        return {w.video for w in self.warnings if w.kind == kind}

    def warning_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(w.kind for w in self.warnings).items()))

    def __str__(self) -> str:
        subsets = ", ".join(f"{s}: {n} videos / {self.segments.get(s, 0)} segments" for s, n in self.videos.items())
        content = (f"  {subsets}; {self.num_classes} classes; {self.snippets} snippets; {self.ambiguous} ambiguous"
                   if self.labelled else f"  unlabelled (no classes or segments): {sum(self.videos.values())} "
                                         f"videos; {self.snippets} snippets")
        lines = [
            f"wrote {self.path} ({self.source_format}; {self.dtype}; D={self.feature_dim})",
            content,
            f"  checksum {self.checksum}",
        ]
        if self.skipped:
            lines.append(f"  skipped (subset not mapped): {self.skipped}")
        if self.segments_clipped:
            lines.append(f"  segments clipped to [0, duration]: {self.segments_clipped} "
                         f"({self.segments_past_end} entirely after the end)")
        lines += [f"  note: {n}" for n in self.notes]
        for kind, n in self.warning_counts().items():
            examples = [w for w in self.warnings if w.kind == kind]
            lines.append(f"  {n} warning(s) {kind}:")
            lines += [f"    {w}" for w in examples[:5]]
            if n > 5:
                lines.append(f"    ... {n - 5} more")
        return "\n".join(lines)


def check_features(x: np.ndarray, *, file: str | os.PathLike, video: str, fld: str, dtype: str) -> np.ndarray:
    """Return ``x`` if it is a valid [T>0, D] feature matrix for ``dtype``, else raise :class:`PrepareError`."""
    where = dict(file=file, video=video, field=fld)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise PrepareError(f"features must be a numeric array, got dtype {x.dtype}", **where)
    if x.ndim != 2:
        raise PrepareError(f"features must be 2-D [T, D], got shape {x.shape}", **where)
    if x.shape[0] == 0:
        raise PrepareError(f"zero-length video: features have shape {x.shape}", **where)
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise PrepareError(f"{n_nan} NaN and {n_inf} inf values (first at snippet {bad[0]}, channel {bad[1]})",
                           **where)
    if dtype == "float16":
        peak = float(np.abs(x).max())
        if peak > FLOAT16_MAX:
            raise PrepareError(f"value {peak:g} overflows float16 (max {FLOAT16_MAX:g}); use data.prepare.dtype=float32",
                               **where)
    return x


def short_repr(x: object, limit: int = 60) -> str:
    """``repr(x)`` cut to ``limit`` characters, for error messages."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_sequence(x: object) -> bool:
    return isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim >= 1)


def parse_intervals(raw, *, file: str | os.PathLike, video: str, fld: str) -> np.ndarray:
    """[[start, end], ...] (numbers or numeric strings) -> float64 [N, 2]; end < start is an error."""
    if not _is_sequence(raw):
        raise PrepareError(f"intervals must be [start, end] pairs of numbers; got {type(raw).__name__} "
                           f"{short_repr(raw)} instead of a list of pairs", file=file, video=video, field=fld)
    rows = []
    for j, pair in enumerate(raw):
        if not (_is_sequence(pair) and len(pair) == 2):
            raise PrepareError(f"intervals must be [start, end] pairs of numbers; interval {j} is "
                               f"{short_repr(pair)}", file=file, video=video, field=fld)
        try:
            rows.append((float(pair[0]), float(pair[1])))
        except (TypeError, ValueError) as exc:
            raise PrepareError(f"intervals must be [start, end] pairs of numbers; interval {j} is "
                               f"{short_repr(pair)} ({exc})", file=file, video=video, field=fld) from None
    bounds = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(bounds).all():
        raise PrepareError("non-finite interval bound", file=file, video=video, field=fld)
    bad = np.flatnonzero(bounds[:, 1] < bounds[:, 0])
    if len(bad):
        raise PrepareError(f"interval {bad[0]} ends before it starts: {bounds[bad[0]].tolist()}",
                           file=file, video=video, field=fld)
    return bounds


def clip_intervals(bounds: np.ndarray, duration: float, *, past_end: str, file: str | os.PathLike,
                   video: str, fld: str, kind: str) -> tuple[np.ndarray, np.ndarray, int, int, PrepareWarning | None]:
    """Clip intervals to [0, duration].

    Returns (clipped bounds, kept mask over the input, n clipped, n past the end, warning). An
    interval starting at or after the end is kept as the zero-length [duration, duration] when
    ``past_end == "keep"`` (it still counts as an instance, as in the source evaluation where it
    can never be matched) or removed when ``past_end == "drop"``.
    """
    if len(bounds) == 0:
        return bounds, np.ones(0, dtype=bool), 0, 0, None
    lo, hi = bounds[:, 0], bounds[:, 1]
    outside = (lo < 0) | (hi > duration)
    past = (lo >= duration) & (hi > duration)
    keep = ~past if past_end == "drop" else np.ones(len(bounds), dtype=bool)
    clipped = np.clip(bounds, 0.0, duration)[keep]
    n_out, n_past = int(outside.sum()), int(past.sum())
    warning = None
    if n_out:
        fate = "dropped" if past_end == "drop" else "kept as zero-length at the end"
        warning = PrepareWarning(
            kind, str(file), video, fld,
            f"{n_out} of {len(bounds)} intervals outside [0, {duration:.3f}] s "
            f"(of those: min start {lo[outside].min():.3f}, max end {hi[outside].max():.3f}) clipped"
            + (f"; {n_past} start at or after the end, {fate}" if n_past else ""),
        )
    return clipped, keep, n_out, n_past, warning


def empty_interval_warning(bounds: np.ndarray, *, file: str | os.PathLike, video: str,
                           fld: str) -> PrepareWarning | None:
    """A warning for zero-length intervals (end == start): kept, but they cannot be matched."""
    n = int((bounds[:, 1] == bounds[:, 0]).sum())
    if not n:
        return None
    return PrepareWarning("empty_segment", str(file), video, fld,
                          f"{n} of {len(bounds)} intervals have end == start: kept")
