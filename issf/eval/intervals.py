"""Small vectorised helpers on temporal intervals shared by localization and evaluation."""

from __future__ import annotations

import numpy as np


def seconds_to_snippet_range(seconds: np.ndarray, snippet_seconds: float) -> np.ndarray:
    """Seconds -> snippet index with round-half-to-even, as W-TALC's ``round(t * 25/16)``.

    ``np.round`` rounds half to even like Python's ``round``; the product is taken in float64
    exactly as the official code does (``t * 25 / 16`` for 0.64 s snippets).
    """
    factor = 1.0 / snippet_seconds
    if abs(snippet_seconds - 16.0 / 25.0) < 1e-12:
        return np.round(np.asarray(seconds, dtype=np.float64) * 25 / 16).astype(np.int64)
    return np.round(np.asarray(seconds, dtype=np.float64) * factor).astype(np.int64)


def overlaps_any(
    video: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    other_video: np.ndarray,
    other_start: np.ndarray,
    other_end: np.ndarray,
) -> np.ndarray:
    """Boolean mask: interval i has a strictly positive overlap with some interval of the same video.

    Works for seconds and for half-open snippet ranges alike (overlap = min(end) - max(start) > 0).
    Memory is O(N * A) per call; callers with huge inputs should chunk by video.
    """
    video = np.asarray(video)
    out = np.zeros(len(video), dtype=bool)
    if len(video) == 0 or len(other_video) == 0:
        return out
    other_video = np.asarray(other_video)
    order = np.argsort(other_video, kind="stable")
    ov, os_, oe = other_video[order], np.asarray(other_start)[order], np.asarray(other_end)[order]
    for v in np.unique(ov[np.isin(ov, video)]):
        lo, hi = np.searchsorted(ov, v, "left"), np.searchsorted(ov, v, "right")
        rows = np.flatnonzero(video == v)
        inter = np.minimum(np.asarray(end)[rows, None], oe[None, lo:hi]) - np.maximum(
            np.asarray(start)[rows, None], os_[None, lo:hi]
        )
        out[rows] = (inter > 0).any(axis=1)
    return out
