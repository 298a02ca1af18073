"""Diagnostic figures: one video's timeline, per-class AP, the error breakdown and mAP curves.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing is
shown, no global figure state builds up and no GUI backend is needed (PNGs are drawn with Agg).
Notebooks display the returned figure; :func:`save_figure` writes it as PNG.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from issf.data.annotations import GroundTruth
from issf.eval.detections import Detections
from issf.eval.error_analysis import CATEGORIES, ErrorBreakdown
from issf.utils.io import atomic_write

CATEGORY_LABELS = {
    "true_positive": "True positive",
    "double_detection": "Double detection",
    "wrong_label": "Wrong label",
    "localization": "Localization",
    "confusion": "Confusion",
    "background": "Background",
}
CATEGORY_COLORS = {
    "true_positive": "#2ca02c",
    "double_detection": "#9467bd",
    "wrong_label": "#d62728",
    "localization": "#ff7f0e",
    "confusion": "#e377c2",
    "background": "#7f7f7f",
}


def class_color(c: int) -> tuple[float, float, float, float]:
    """Stable colour of class ``c``: the 10 dark tab20 colours first, then the 10 light ones."""
    return matplotlib.colormaps["tab20"]((2 * c) % 20 + (c // 10) % 2)


# ---------------------------------------------------------------------------------------------
# Timeline of one video


def _runs(mask: np.ndarray) -> np.ndarray:
    """``[R, 2]`` (start, end) index pairs of the True runs of a 1-D mask, ends exclusive."""
    step = np.diff(np.r_[0, np.asarray(mask, dtype=np.int8), 0])
    return np.c_[np.flatnonzero(step == 1), np.flatnonzero(step == -1)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _class_index(c: int | str, class_names: Sequence[str]) -> int:
    if isinstance(c, str):
        return list(class_names).index(c)
    if not 0 <= int(c) < len(class_names):
        raise ValueError(f"class index {c} out of range for {len(class_names)} classes")
    return int(c)


def _default_classes(gt_classes: np.ndarray, cas: np.ndarray | None, dets: Detections, top: int) -> list[int]:
    """GT classes of the video, then the ``top`` classes with the highest video score.

    The video score is the mean of the top ``max(1, T // 8)`` CAS values (top-k pooling); without
    a CAS it is the best detection score.
    """
    if cas is not None and len(cas):
        k = max(1, len(cas) // 8)
        score = np.sort(cas, axis=0)[-k:].mean(axis=0)
        predicted = np.argsort(-score, kind="stable")
    else:
        order = np.argsort(-dets.score, kind="stable")
        _, first = np.unique(dets.label[order], return_index=True)
        predicted = dets.label[order][np.sort(first)]
    chosen = [int(c) for c in gt_classes]
    chosen += [int(c) for c in predicted if int(c) not in chosen][:top]
    return chosen


def _draw_ground_truth(ax: Axes, gt: GroundTruth, v: int, class_names: Sequence[str]) -> None:
    seg = gt.segment_video == v
    labels = np.unique(gt.segment_label[seg])
    for row, c in enumerate(labels):
        s = gt.segments[seg & (gt.segment_label == c)]
        ax.broken_barh(list(zip(s[:, 0], s[:, 1] - s[:, 0])), (row - 0.4, 0.8), color=class_color(c))
    for s, e in gt.ambiguous[gt.ambiguous_video == v]:
        ax.axvspan(s, e, facecolor="none", edgecolor="0.5", hatch="///", linewidth=0.0)
    ax.set_yticks(range(len(labels)), [class_names[c] for c in labels], fontsize=8)
    ax.set_ylim(-0.6, max(len(labels), 1) - 0.4)
    ax.invert_yaxis()
    ax.set_ylabel("GT")
    if not len(labels):
        ax.text(0.5, 0.5, "no ground truth", transform=ax.transAxes, ha="center", va="center")


def _draw_detections(ax: Axes, dets: Detections, class_names: Sequence[str]) -> None:
    """One row per detection, best score on top, opacity growing with the score."""
    lo, hi = (dets.score.min(), dets.score.max()) if len(dets) else (0.0, 0.0)
    alpha = 0.25 + 0.75 * (dets.score - lo) / (hi - lo) if hi > lo else np.ones(len(dets))
    for row in range(len(dets)):
        c = int(dets.label[row])
        width = dets.end[row] - dets.start[row]
        ax.barh(row, width, left=dets.start[row], height=0.8, color=class_color(c), alpha=float(alpha[row]))
    ax.set_yticks(
        range(len(dets)),
        [f"{class_names[c]} {s:.2f}" for c, s in zip(dets.label, dets.score)],
        fontsize=6,
    )
    ax.set_ylim(-0.6, max(len(dets), 1) - 0.4)
    ax.invert_yaxis()
    ax.set_ylabel("detections")
    if not len(dets):
        ax.text(0.5, 0.5, "no detections", transform=ax.transAxes, ha="center", va="center")


def _draw_curves(
    ax: Axes, t: np.ndarray, values: np.ndarray, classes: list[int], names: Sequence[str]
) -> None:
    for c in classes:
        ax.plot(t, values[:, c], drawstyle="steps-mid", color=class_color(c), lw=1.2, label=names[c])


def _legend(ax: Axes, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=7, ncol=3, framealpha=0.7, **kw)


def plot_video_timeline(
    video_id: str | int,
    gt: GroundTruth,
    detections: Detections | None,
    cas: np.ndarray | None,
    class_names: Sequence[str],
    snippet_seconds: float,
    attention: np.ndarray | None = None,
    saliency: np.ndarray | None = None,
    salient: np.ndarray | None = None,
    pseudo_labels: np.ndarray | None = None,
    classes: Sequence[int | str] | None = None,
    max_detections: int = 20,
    top_classes: int = 2,
) -> Figure:
    """Stacked panels of one video on a shared time axis in seconds.

    Panels, top to bottom (a panel is skipped when its input is None): ground truth (one row per
    class, ambiguous intervals hatched grey); the ``max_detections`` best detections of the video
    (one row each, opacity by score); the CAS ``[T, C]`` of ``classes``; the class-agnostic
    attention ``[T]``; the saliency differences ``[T]`` with the ``salient`` snippets shaded; the
    pseudo-label target (softmax of the ``[T, C+1]`` logits; background dashed). ``classes``
    (indices or names) defaults to the video's GT classes plus the ``top_classes`` best predicted
    ones. ``video_id`` is an id of ``gt.video_ids`` or a video index. Snippet ``i`` is drawn at
    its centre ``(i + 0.5) * snippet_seconds``.
    """
    v = gt.video_ids.index(video_id) if isinstance(video_id, str) else int(video_id)
    name = gt.video_ids[v]
    n_cls = len(class_names)
    given = {"cas": cas, "attention": attention, "saliency": saliency, "salient": salient}
    given["pseudo_labels"] = pseudo_labels
    arrays = {k: np.asarray(a) for k, a in given.items() if a is not None}
    lengths = {k: len(a) for k, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"plot_video_timeline({name}): inputs differ in length: {lengths}")
    if "cas" in arrays and arrays["cas"].shape[1:] != (n_cls,):
        raise ValueError(f"plot_video_timeline({name}): cas must be [T, {n_cls}], got {arrays['cas'].shape}")
    if "pseudo_labels" in arrays and arrays["pseudo_labels"].shape[1:] != (n_cls + 1,):
        raise ValueError(
            f"plot_video_timeline({name}): pseudo_labels must be [T, {n_cls + 1}], "
            f"got {arrays['pseudo_labels'].shape}"
        )
    n_t = next(iter(lengths.values()), 0)
    t = (np.arange(n_t) + 0.5) * snippet_seconds

    dets = Detections(units="seconds")
    if detections is not None:
        d = detections.to_seconds(snippet_seconds) if detections.units == "snippets" else detections
        d = d.select(d.video == v)
        dets = d.select(np.argsort(-d.score, kind="stable")[:max_detections])
    if classes is None:
        chosen = _default_classes(np.flatnonzero(gt.labels[v]), arrays.get("cas"), dets, top_classes)
    else:
        chosen = [_class_index(c, class_names) for c in classes]

    panels: list[tuple[str, float]] = [
        ("gt", 0.6 + 0.3 * max(1, len(np.unique(gt.segment_label[gt.segment_video == v]))))
    ]
    if detections is not None:
        panels.append(("detections", 0.8 + 0.15 * len(dets)))
    panels += [(k, 1.6) for k in ("cas", "attention") if k in arrays]
    if "saliency" in arrays or "salient" in arrays:
        panels.append(("saliency", 1.6))
    if "pseudo_labels" in arrays:
        panels.append(("pseudo_labels", 1.6))

    ratios = [h for _, h in panels]
    fig = Figure(figsize=(12, 0.9 * sum(ratios) + 0.8), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, height_ratios=ratios)[:, 0]
    for ax, (kind, _) in zip(axes, panels):
        if kind == "gt":
            _draw_ground_truth(ax, gt, v, class_names)
        elif kind == "detections":
            _draw_detections(ax, dets, class_names)
        elif kind == "cas":
            _draw_curves(ax, t, arrays["cas"], chosen, class_names)
            ax.set_ylabel("CAS")
            _legend(ax)
        elif kind == "attention":
            ax.plot(t, arrays["attention"], drawstyle="steps-mid", color="k", lw=1.0)
            ax.set_ylabel("attention")
        elif kind == "saliency":
            if "saliency" in arrays:
                ax.plot(t, arrays["saliency"], drawstyle="steps-mid", color="tab:blue", lw=1.0)
            if "salient" in arrays:
                for s, e in _runs(arrays["salient"].astype(bool)):
                    ax.axvspan(s * snippet_seconds, e * snippet_seconds, color="tab:orange", alpha=0.3, lw=0)
                shade = Patch(color="tab:orange", alpha=0.3, label="salient")
                ax.legend(handles=[shade], loc="upper right", fontsize=7)
            ax.set_ylabel("saliency")
        elif kind == "pseudo_labels":
            prob = _softmax(arrays["pseudo_labels"].astype(np.float64))
            _draw_curves(ax, t, prob, chosen, class_names)
            ax.plot(t, prob[:, -1], drawstyle="steps-mid", color="0.4", ls="--", lw=1.0, label="background")
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("pseudo-label\ntarget")
            _legend(ax)
    end = max(float(gt.durations[v]), n_t * snippet_seconds)
    axes[-1].set_xlim(0.0, end if end > 0 else 1.0)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"{name} ({gt.durations[v]:.1f} s)")
    return fig


# ---------------------------------------------------------------------------------------------
# Summaries


def plot_per_class_ap(per_class: dict[str, float], title: str = "Per-class AP", xlabel: str = "AP") -> Figure:
    """Horizontal bars of AP per class, best on top, with the mean (NaN entries are left out)."""
    items = sorted(((float(v), k) for k, v in per_class.items() if not math.isnan(float(v))))
    fig = Figure(figsize=(7, 1.0 + 0.25 * max(len(items), 2)), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    if not items:
        ax.text(0.5, 0.5, "no finite AP", transform=ax.transAxes, ha="center", va="center")
        return fig
    values = [v for v, _ in items]
    ax.barh(range(len(items)), values, color="tab:blue")
    ax.set_yticks(range(len(items)), [k for _, k in items], fontsize=8)
    mean = float(np.mean(values))
    ax.axvline(mean, color="k", ls="--", lw=1.0, label=f"mean {mean:.2f}")
    ax.set_xlabel(xlabel)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_error_breakdown(breakdown: ErrorBreakdown) -> Figure:
    """Left: share of each category among the considered detections; right: FN rate per length bin."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_fp, ax_fn = fig.subplots(1, 2)

    pct = [100.0 * breakdown.fractions[c] for c in CATEGORIES]
    bars = ax_fp.bar(range(len(CATEGORIES)), pct, color=[CATEGORY_COLORS[c] for c in CATEGORIES])
    ax_fp.bar_label(bars, [str(breakdown.counts[c]) for c in CATEGORIES], fontsize=8)
    ax_fp.set_xticks(
        range(len(CATEGORIES)), [CATEGORY_LABELS[c] for c in CATEGORIES], rotation=30, ha="right"
    )
    ax_fp.set_ylabel("% of detections")
    top = "all" if breakdown.top_k_factor is None else f"top-{breakdown.top_k_factor:g}G"
    ax_fp.set_title(f"Detections ({top}, n={breakdown.num_considered}, tIoU {breakdown.tiou:g})")

    rates = breakdown.false_negative_rates
    names = list(breakdown.bin_names)
    fn_pct = [0.0 if math.isnan(rates[b]) else 100.0 * rates[b] for b in names]
    bars = ax_fn.bar(range(len(names)), fn_pct, color="tab:red")
    ax_fn.bar_label(
        bars, [f"{breakdown.false_negatives[b]}/{breakdown.gt_per_bin[b]}" for b in names], fontsize=8
    )
    ax_fn.set_xticks(range(len(names)), names)
    ax_fn.set_ylim(0, 105)
    ax_fn.set_xlabel("instance length")
    ax_fn.set_ylabel("% of GT instances missed")
    ax_fn.set_title(f"False negatives ({breakdown.num_false_negatives} of {len(breakdown.gt_matched)})")
    return fig


def _read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV as float arrays (empty or non-numeric cells become NaN)."""

    def number(x: str) -> float:
        try:
            return float(x)
        except ValueError:
            return float("nan")

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty CSV")
    header, body = rows[0], rows[1:]
    body = [r + [""] * (len(header) - len(r)) for r in body]
    return {h: np.array([number(r[i]) for r in body], dtype=np.float64) for i, h in enumerate(header)}


def _threshold(col: str) -> float:
    try:
        return float(col.rsplit("@", 1)[1])
    except ValueError:
        return math.inf


def plot_map_curves(
    metrics_csv: str | os.PathLike, prefix: str = "val/", loss_prefix: str = "train/loss"
) -> Figure:
    """mAP@tIoU and the averages vs epoch from a Lightning ``metrics.csv``, losses in a second panel.

    Reads the ``{prefix}mAP@<t>`` and ``{prefix}AVG*`` columns and, when present, the columns
    starting with ``loss_prefix``; rows where a column is empty are skipped for that column. The
    x axis is ``epoch`` (``step`` when there is no epoch column).
    """
    path = Path(metrics_csv)
    cols = _read_csv_columns(path)
    x_key = "epoch" if "epoch" in cols else "step"
    if x_key not in cols:
        raise ValueError(f"{path}: no 'epoch' or 'step' column")
    maps = sorted((c for c in cols if c.startswith(f"{prefix}mAP@")), key=_threshold)
    avgs = sorted(c for c in cols if c.startswith(f"{prefix}AVG"))
    losses = sorted(c for c in cols if c.startswith(loss_prefix))
    if not (maps or avgs or losses):
        raise ValueError(f"{path}: no '{prefix}mAP@*', '{prefix}AVG*' or '{loss_prefix}*' columns")

    def series(col: str) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(cols[x_key]) & np.isfinite(cols[col])
        return cols[x_key][ok], cols[col][ok]

    n = int(bool(maps or avgs)) + int(bool(losses))
    fig = Figure(figsize=(9, 3.5 * n), layout="constrained")
    axes = list(fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0])
    if maps or avgs:
        ax = axes.pop(0)
        cmap = matplotlib.colormaps["viridis"]
        for i, c in enumerate(maps):
            ax.plot(
                *series(c), marker=".", lw=1.0, color=cmap(i / max(len(maps) - 1, 1)), label=c[len(prefix) :]
            )
        for c, ls in zip(avgs, ["-", "--", ":", "-."] * len(avgs)):
            ax.plot(*series(c), marker="o", ms=3, lw=2.0, color="k", ls=ls, label=c[len(prefix) :])
        ax.set_ylabel("mAP")
        ax.set_title(f"{prefix}mAP")
        ax.legend(fontsize=7, ncol=2, loc="best")
        ax.grid(alpha=0.3)
    if losses:
        ax = axes.pop(0)
        for c in losses:
            ax.plot(*series(c), lw=2.0 if c.endswith("total") else 1.0, label=c)
        ax.set_ylabel("loss")
        ax.legend(fontsize=7, ncol=2, loc="best")
        ax.grid(alpha=0.3)
    fig.axes[-1].set_xlabel(x_key)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically (parent folders created) and release it; returns the path."""
    path = Path(path)
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, dpi=dpi, format="png")
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # a figure made through pyplot is also registered there
            pyplot.close(fig)
    return path
