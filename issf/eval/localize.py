"""Class activation sequences (CAS) -> temporal proposals -> NMS -> detections.

The default configuration is the localization path of the official ISSF evaluation (W-TALC style,
docs/method.md, "Inference and localization") including its quirks (``compat_end_plus_one``):

* a class is localized in a video when its video score is ``>= class_threshold``;
* for each CAS threshold ``theta`` a run is a maximal block of snippets with ``cas > theta``
  (strict, compared in float64), from ``s`` (first above) to ``e`` (exclusive);
  runs with ``e - s >= min_length`` become proposals;
* score = inner mean - outer mean (outer-inner contrast, outer mean 0 when there are no outer
  snippets); the proposals of all thresholds are pooled and reduced per (video, class) by NMS.

Everything is vectorised over snippets and thresholds; the only Python loops are over videos,
over the classes of a video for NMS, and over the boxes kept by greedy NMS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from issf.eval.detections import Detections
from issf.utils.config_types import check_field_types

#: Exact doubles of ``np.arange(0.001, 0.04, 0.002)`` (some are not the decimal literals).
DEFAULT_CAS_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.001, 0.04, 0.002))

NMS_KINDS = ("official", "iou", "soft")
CLASS_SELECTIONS = ("threshold", "relative", "top_k")
SCORE_KINDS = ("contrast", "contrast_x_video")


@dataclass
class LocalizationConfig:
    """Options of :func:`localize`; the defaults reproduce the official ISSF evaluation.

    * ``nms``: ``"official"`` (intersection over the candidate's length with the +1 convention of
      inclusive ends, drop when ``> nms_threshold``), ``"iou"`` (IoU of half-open intervals, drop when
      ``> nms_threshold``) or ``"soft"`` (Gaussian soft-NMS on IoU with ``soft_nms_sigma``).
    * ``score``: ``"contrast"`` or ``"contrast_x_video"`` (contrast times the class's video score).
    * ``upsample``: linear interpolation of the CAS by this factor before thresholding (sample
      centres aligned with snippet centres, values held constant past the first/last snippet
      centre). All rules then work on samples; ``min_length`` stays in snippets
      (``min_length * upsample`` samples) and output boundaries are converted back to (fractional)
      snippet units.
    * ``class_selection``: which classes of a video are localized: ``"threshold"`` (video score
      ``>= class_threshold``, the official rule), ``"relative"`` (video score ``>= class_relative``
      times the video's top score) or ``"top_k"`` (the ``class_top_k`` highest video scores). The
      last two do not depend on how flat a softmax over many classes is.
    * ``max_detections``: keep at most this many detections per video (highest scores) after NMS.
    * ``fallback_whole_video``: a video whose CAS yields no proposal (its CAS never crosses the
      fixed CAS thresholds, as with the flat CAS of a softmax over many classes) gets one detection
      instead: its top class over the whole video, scored with that class's video score.
    * ``compat_end_plus_one``: the official proposal geometry (inner mean over ``s:e+1``, stored end
      ``e + 1``, outer after-region from ``e + 1`` capped at ``T - 1``). ``False`` gives the clean
      geometry: proposal ``[s, e)``, inner mean over ``s:e``, outer ``ceil(L * outer_ratio)``
      snippets on each side, clipped to the video.
    """

    class_threshold: float = 0.1
    class_selection: str = "threshold"
    class_relative: float = 0.5
    class_top_k: int = 2
    cas_thresholds: tuple[float, ...] = DEFAULT_CAS_THRESHOLDS
    min_length: int = 2
    outer_ratio: float = 0.25
    nms: str = "official"
    nms_threshold: float = 0.45
    soft_nms_sigma: float = 0.5
    score: str = "contrast"
    upsample: int = 1
    max_detections: int | None = None
    fallback_whole_video: bool = False
    compat_end_plus_one: bool = True

    def __post_init__(self) -> None:
        check_field_types(self, "data.evaluation.localization.")
        self.cas_thresholds = tuple(float(t) for t in self.cas_thresholds)
        self.class_threshold = float(self.class_threshold)  # a Python float: compared in the scores' dtype
        if self.class_selection not in CLASS_SELECTIONS:
            raise ValueError(
                f"LocalizationConfig.class_selection must be one of {CLASS_SELECTIONS}, got {self.class_selection!r}"
            )
        if int(self.class_top_k) < 1 or not 0.0 < float(self.class_relative) <= 1.0:
            raise ValueError("LocalizationConfig: class_top_k must be >= 1 and class_relative in (0, 1]")
        if self.nms not in NMS_KINDS:
            raise ValueError(f"LocalizationConfig.nms must be one of {NMS_KINDS}, got {self.nms!r}")
        if self.score not in SCORE_KINDS:
            raise ValueError(f"LocalizationConfig.score must be one of {SCORE_KINDS}, got {self.score!r}")
        if int(self.upsample) < 1:
            raise ValueError(f"LocalizationConfig.upsample must be >= 1, got {self.upsample}")
        if self.max_detections is not None and self.max_detections < 0:
            raise ValueError(f"LocalizationConfig.max_detections must be >= 0, got {self.max_detections}")
        if self.soft_nms_sigma <= 0:
            raise ValueError(f"LocalizationConfig.soft_nms_sigma must be > 0, got {self.soft_nms_sigma}")
        key = "data.evaluation.localization."
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"{key}nms_threshold: must be in (0, 1], got {self.nms_threshold}")
        if self.min_length < 1:
            raise ValueError(f"{key}min_length: must be an integer >= 1 (snippets), got {self.min_length}")
        if not self.outer_ratio >= 0:
            raise ValueError(f"{key}outer_ratio: must be >= 0, got {self.outer_ratio}")
        if not 0.0 <= self.class_threshold <= 1.0:
            raise ValueError(f"{key}class_threshold: must be in [0, 1], got {self.class_threshold}")


# ---------------------------------------------------------------------------------------------
# NMS


def _overlap_official(s0: float, e0: float, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Official ratio: (inclusive) intersection over the candidates' inclusive length ``e - s + 1``."""
    inter = np.maximum(0.0, np.minimum(e0, e) - np.maximum(s0, s) + 1.0)
    return inter / (e - s + 1.0)


def _iou(s0: float, e0: float, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """IoU of the half-open interval ``[s0, e0)`` with each ``[s, e)`` (0 when the union is empty)."""
    inter = np.maximum(0.0, np.minimum(e0, e) - np.maximum(s0, s))
    union = (e0 - s0) + (e - s) - inter
    return inter / np.maximum(union, np.finfo(np.float64).tiny)


_PAIRWISE_MAX = 512  # boxes up to which greedy NMS precomputes the pairwise overlap matrix


def _greedy_nms(
    starts: np.ndarray,
    ends: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    overlap: Callable[..., np.ndarray],
) -> np.ndarray:
    """Kept indices in pick order; a kept box drops every later box it overlaps ``> threshold``."""
    s = np.asarray(starts, dtype=np.float64).reshape(-1)
    e = np.asarray(ends, dtype=np.float64).reshape(-1)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-sc, kind="stable")
    s, e = s[order], e[order]
    keep: list[int] = []
    if len(order) <= _PAIRWISE_MAX:  # all overlaps at once, then a cheap greedy pass
        suppress = overlap(s[:, None], e[:, None], s[None, :], e[None, :]) > threshold
        alive = np.ones(len(order), dtype=bool)
        for i in range(len(order)):
            if alive[i]:
                keep.append(i)
                alive &= ~suppress[i]
        return order[np.asarray(keep, dtype=np.int64)]
    rest = np.arange(len(order))
    while rest.size:
        i = int(rest[0])
        keep.append(i)
        rest = rest[1:]
        if rest.size:
            rest = rest[~(overlap(s[i], e[i], s[rest], e[rest]) > threshold)]
    return order[np.asarray(keep, dtype=np.int64)]


def nms_official(
    starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, threshold: float = 0.45
) -> np.ndarray:
    """Greedy NMS of the official ISSF/W-TALC code; returns kept indices in pick order.

    Ends are inclusive-style stored ends: box i suppresses candidate j when
    ``(min(e_i, e_j) - max(s_i, s_j) + 1) / (e_j - s_j + 1) > threshold`` (not IoU, not symmetric).
    Exact score ties are picked in input order.
    """
    return _greedy_nms(starts, ends, scores, threshold, _overlap_official)


def nms_iou(starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS on the IoU of half-open intervals; drops a box when IoU ``> threshold``.

    Returns kept indices in pick order (descending score, ties in input order).
    """
    return _greedy_nms(starts, ends, scores, threshold, _iou)


def soft_nms(
    starts: np.ndarray,
    ends: np.ndarray,
    scores: np.ndarray,
    sigma: float = 0.5,
    min_score: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS on the IoU of half-open intervals.

    Repeatedly picks the highest (decayed) score and decays every remaining box by
    ``w = exp(-iou**2 / sigma)``: ``score -= (1 - w) * |score|``, which is the usual ``score * w``
    for non-negative scores and keeps negative scores from rising towards 0. Boxes whose decayed
    score falls below ``min_score`` are dropped. Returns (indices in pick order, their scores).
    """
    s = np.asarray(starts, dtype=np.float64).reshape(-1)
    e = np.asarray(ends, dtype=np.float64).reshape(-1)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1).copy()
    rest = np.arange(len(sc))
    if min_score is not None:
        rest = rest[sc >= min_score]
    keep: list[int] = []
    while rest.size:
        j = int(np.argmax(sc[rest]))
        i = int(rest[j])
        keep.append(i)
        rest = np.delete(rest, j)
        if rest.size:
            w = np.exp(-(_iou(s[i], e[i], s[rest], e[rest]) ** 2) / sigma)
            sc[rest] -= (1.0 - w) * np.abs(sc[rest])
            if min_score is not None:
                rest = rest[sc[rest] >= min_score]
    idx = np.asarray(keep, dtype=np.int64)
    return idx, sc[idx]


# ---------------------------------------------------------------------------------------------
# Proposals


def upsample_cas(cas: np.ndarray, factor: int) -> np.ndarray:
    """Linear interpolation of a ``[T, C]`` CAS to ``[T * factor, C]`` samples.

    Sample j covers snippet time ``[j / factor, (j + 1) / factor)``; its value is interpolated at
    its centre between snippet centres and held constant beyond the first and last centre.
    """
    cas = np.asarray(cas, dtype=np.float64)
    if factor == 1 or len(cas) == 0:
        return cas
    t = len(cas)
    pos = np.clip((np.arange(t * factor) + 0.5) / factor - 0.5, 0.0, t - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, t - 1)
    w = (pos - i0)[:, None]
    return cas[i0] * (1.0 - w) + cas[i1] * w


def _proposals(
    x: np.ndarray, thresholds: np.ndarray, cfg: LocalizationConfig, min_samples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of all thresholds for the columns of ``x`` [T, M] (float64).

    Returns (column, start, end, contrast) with ``end`` the stored end (exclusive run end + 1 in
    compat mode). Rows come in threshold order, then column, then position.
    """
    t, m = x.shape
    above = np.zeros((len(thresholds), m, t + 2), dtype=np.int8)
    above[:, :, 1:-1] = x.T[None, :, :] > thresholds[:, None, None]
    step = np.diff(above, axis=-1).ravel()  # rows of length t + 1
    run_start = np.flatnonzero(step == 1)
    run_end = np.flatnonzero(step == -1)  # runs alternate within each row, so they pair up
    row = run_start // (t + 1)
    s = run_start - row * (t + 1)
    e = run_end - row * (t + 1)
    ok = e - s >= min_samples
    col, s, e = row[ok] % m, s[ok], e[ok]

    cs = np.zeros((t + 1, m))
    np.cumsum(x, axis=0, out=cs[1:])
    length = e - s
    reach = cfg.outer_ratio * length
    lo = np.maximum(0, np.trunc(s - reach).astype(np.int64))
    if cfg.compat_end_plus_one:
        inner_end = np.minimum(e + 1, t)
        after = e + 1
        hi = np.minimum(t - 1, np.trunc(e + reach + 1).astype(np.int64))
        stored_end = e + 1
    else:
        inner_end = e
        after = e
        hi = np.minimum(t, np.ceil(e + reach).astype(np.int64))
        stored_end = e
    inner = (cs[inner_end, col] - cs[s, col]) / (inner_end - s)
    n_after = np.maximum(0, hi - after)
    after_c = np.minimum(after, t)
    after_sum = np.where(n_after > 0, cs[np.maximum(hi, after_c), col] - cs[after_c, col], 0.0)
    n_out = (s - lo) + n_after
    outer_sum = (cs[s, col] - cs[lo, col]) + after_sum
    outer = np.where(n_out > 0, outer_sum / np.maximum(n_out, 1), 0.0)
    return col, s, stored_end, inner - outer


def _nms_group(
    s: np.ndarray, e: np.ndarray, sc: np.ndarray, cfg: LocalizationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(kept indices, their scores) of one (video, class) with the configured NMS."""
    if cfg.nms == "official":
        keep = nms_official(s, e, sc, cfg.nms_threshold)
        return keep, sc[keep]
    if cfg.nms == "iou":
        keep = nms_iou(s, e, sc, cfg.nms_threshold)
        return keep, sc[keep]
    return soft_nms(s, e, sc, cfg.soft_nms_sigma)


def select_classes(video_scores: np.ndarray, cfg: LocalizationConfig) -> np.ndarray:
    """Ascending indices of the classes to localize in a video with these scores [C]."""
    if cfg.class_selection == "top_k":
        return np.sort(np.argsort(-video_scores, kind="stable")[: int(cfg.class_top_k)])
    if cfg.class_selection == "relative":
        return np.flatnonzero(video_scores >= float(cfg.class_relative) * video_scores.max(initial=0.0))
    return np.flatnonzero(video_scores >= cfg.class_threshold)


def localize_video(
    cas: np.ndarray,
    video_scores: np.ndarray,
    cfg: LocalizationConfig | None = None,
    video: int = 0,
) -> Detections:
    """Detections (snippet units) of one video from its CAS ``[T, C]`` and video scores ``[C]``.

    Rows are grouped by class (ascending) and ordered by descending score within a class.
    Identical candidates (same class, start and end; pooled from several thresholds) are merged
    before NMS, and score ties are broken by earlier start, then earlier end.
    """
    cfg = cfg or LocalizationConfig()
    dets = _localize_proposals(cas, video_scores, cfg, video)
    if len(dets) or not cfg.fallback_whole_video or len(cas) == 0:
        return dets
    vs = np.asarray(video_scores).reshape(-1)
    top = int(np.argmax(vs))
    return Detections(np.array([video]), np.array([0.0]), np.array([float(len(cas))]), np.array([top]),
                      np.array([float(vs[top])]))


def _localize_proposals(
    cas: np.ndarray,
    video_scores: np.ndarray,
    cfg: LocalizationConfig | None = None,
    video: int = 0,
) -> Detections:
    """Detections of :func:`localize_video` from the CAS proposals alone (may be empty)."""
    cfg = cfg or LocalizationConfig()
    cas = np.asarray(cas)
    vs = np.asarray(video_scores).reshape(-1)
    if cas.ndim != 2 or cas.shape[1] != len(vs):
        raise ValueError(
            f"localize_video: cas {cas.shape} does not match video_scores {vs.shape} ([T, C] vs [C])"
        )
    classes = select_classes(vs, cfg)
    if len(cas) == 0 or len(classes) == 0 or not cfg.cas_thresholds:
        return Detections()
    factor = int(cfg.upsample)
    x = upsample_cas(cas[:, classes].astype(np.float64), factor)
    thresholds = np.asarray(cfg.cas_thresholds, dtype=np.float64)
    col, s, e, sc = _proposals(x, thresholds, cfg, cfg.min_length * factor)
    if len(col) == 0:
        return Detections()
    if cfg.score == "contrast_x_video":
        sc = sc * vs[classes].astype(np.float64)[col]

    # merge duplicates and sort by (column, start, end)
    width = len(x) + 2
    _, first = np.unique((col * width + s) * width + e, return_index=True)
    col, s, e, sc = col[first], s[first], e[first], sc[first]
    bounds = np.flatnonzero(np.diff(col)) + 1
    parts_idx, parts_score = [], []
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(col)]):
        keep, kept_score = _nms_group(s[lo:hi], e[lo:hi], sc[lo:hi], cfg)
        parts_idx.append(keep + lo)
        parts_score.append(kept_score)
    idx = np.concatenate(parts_idx)
    score = np.concatenate(parts_score)
    if cfg.max_detections is not None and len(idx) > cfg.max_detections:
        top = np.sort(np.argsort(-score, kind="stable")[: cfg.max_detections])
        idx, score = idx[top], score[top]
    return Detections(
        np.full(len(idx), video, dtype=np.int64),
        s[idx] / factor,
        e[idx] / factor,
        classes[col[idx]],
        score,
    )


def localize(
    cas_list: Sequence[np.ndarray],
    video_scores: np.ndarray,
    cfg: LocalizationConfig | None = None,
    lengths: Sequence[int] | np.ndarray | None = None,
    videos: Sequence[int] | np.ndarray | None = None,
) -> Detections:
    """Detections (snippet units) of many videos.

    ``cas_list[i]`` is the ``[T_i, C]`` CAS of video i (or a padded ``[V, T_max, C]`` array with
    ``lengths``), ``video_scores`` is ``[V, C]``. Detections are indexed by position i, or by
    ``videos[i]`` when given.
    """
    cfg = cfg or LocalizationConfig()
    vs = np.asarray(video_scores)
    if vs.ndim != 2 or len(vs) != len(cas_list):
        raise ValueError(
            f"localize: video_scores {vs.shape} must be [V, C] with V = len(cas_list) = {len(cas_list)}"
        )
    parts = []
    for i in range(len(cas_list)):
        cas = np.asarray(cas_list[i])
        if lengths is not None:
            cas = cas[: int(lengths[i])]
        parts.append(localize_video(cas, vs[i], cfg, int(videos[i]) if videos is not None else i))
    return Detections.concatenate(parts)
