"""Diagnostic figures on small synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from issf.analysis.viz import (  # noqa: E402
    _runs,
    plot_error_breakdown,
    plot_map_curves,
    plot_per_class_ap,
    plot_video_timeline,
    save_figure,
)
from issf.data.annotations import GroundTruth  # noqa: E402
from issf.eval.detections import Detections  # noqa: E402
from issf.eval.error_analysis import error_breakdown  # noqa: E402

SNIP = 0.64
T, C = 50, 4
NAMES = ["Run", "Jump", "Throw", "Dive"]


def _gt() -> GroundTruth:
    return GroundTruth(
        class_names=NAMES,
        video_ids=["a", "b"],
        durations=[T * SNIP, 20.0],
        segments=[[3.0, 8.0], [12.0, 15.0], [20.0, 25.0], [1.0, 4.0]],
        segment_video=[0, 0, 0, 1],
        segment_label=[0, 2, 0, 1],
        ambiguous=[[9.0, 10.5]],
        ambiguous_video=[0],
    )


def _outputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cas = rng.random((T, C)) * 0.2
    cas[5:12, 0] += 0.8  # class 0 (a GT class) and class 3 (not in GT) are the strongest
    cas[30:40, 3] += 0.9
    saliency = rng.random(T)
    return {
        "cas": cas,
        "attention": rng.random(T),
        "saliency": saliency,
        "salient": saliency > 0.7,
        "pseudo_labels": rng.normal(size=(T, C + 1)),
    }


def _dets() -> Detections:
    # snippet units on purpose: the timeline converts them; one detection belongs to video "b"
    return Detections([0, 0, 0, 1], [5, 30, 18, 0], [12, 40, 24, 3], [0, 3, 2, 1], [0.9, 0.5, 0.2, 0.7])


def _line_data(ax) -> list[np.ndarray]:
    return [np.asarray(line.get_ydata()) for line in ax.get_lines()]


def test_timeline_all_panels(tmp_path: Path) -> None:
    out = _outputs()
    extra = {k: out[k] for k in ("attention", "saliency", "salient", "pseudo_labels")}
    fig = plot_video_timeline("a", _gt(), _dets(), out["cas"], NAMES, SNIP, **extra)
    assert isinstance(fig, Figure)
    gt_ax, det_ax, cas_ax, att_ax, sal_ax, pl_ax = fig.axes  # exactly six panels
    # GT rows: classes 0 and 2 of video "a"; detections: only the 3 of video "a", best first
    assert [t.get_text() for t in gt_ax.get_yticklabels()] == ["Run", "Throw"]
    assert [t.get_text() for t in det_ax.get_yticklabels()] == ["Run 0.90", "Dive 0.50", "Throw 0.20"]
    bars = det_ax.patches
    assert bars[0].get_x() == pytest.approx(5 * SNIP) and bars[0].get_width() == pytest.approx(7 * SNIP)
    assert bars[0].get_alpha() > bars[2].get_alpha()
    # default classes: GT classes (0, 2) then the 2 best predicted ones not already there (3, 1)
    assert [line.get_label() for line in cas_ax.get_lines()] == ["Run", "Throw", "Dive", "Jump"]
    np.testing.assert_allclose(_line_data(cas_ax)[2], out["cas"][:, 3])
    np.testing.assert_allclose(cas_ax.get_lines()[0].get_xdata(), (np.arange(T) + 0.5) * SNIP)
    np.testing.assert_allclose(_line_data(att_ax)[0], out["attention"])
    # one shaded span per salient run
    assert len(sal_ax.patches) == len(_runs(out["salient"]))
    # pseudo-labels are probabilities: chosen classes + background, summing to <= 1
    probs = np.stack(_line_data(pl_ax))
    assert probs.shape == (5, T) and np.all(probs >= 0) and np.all(probs.sum(0) <= 1 + 1e-9)
    assert pl_ax.get_lines()[-1].get_label() == "background"
    assert pl_ax.get_xlim() == pytest.approx((0.0, T * SNIP))
    png = save_figure(fig, tmp_path / "sub" / "timeline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_timeline_skips_missing_panels() -> None:
    out = _outputs()
    fig = plot_video_timeline("a", _gt(), None, out["cas"], NAMES, SNIP)
    assert len(fig.axes) == 2  # GT + CAS
    fig = plot_video_timeline(1, _gt(), _dets(), None, NAMES, SNIP, salient=out["salient"], classes=["Dive"])
    assert len(fig.axes) == 3  # GT + detections + salient shading
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["Jump 0.70"]
    fig = plot_video_timeline("a", _gt(), None, None, NAMES, SNIP, attention=out["attention"])
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="differ in length"):
        plot_video_timeline("a", _gt(), None, out["cas"], NAMES, SNIP, attention=out["attention"][:-1])
    with pytest.raises(ValueError, match="pseudo_labels"):
        plot_video_timeline("a", _gt(), None, None, NAMES, SNIP, pseudo_labels=out["cas"])


def test_timeline_max_detections_and_explicit_classes() -> None:
    out = _outputs()
    fig = plot_video_timeline("a", _gt(), _dets(), out["cas"], NAMES, SNIP, classes=[1], max_detections=1)
    _, det_ax, cas_ax = fig.axes
    assert len(det_ax.patches) == 1
    assert [line.get_label() for line in cas_ax.get_lines()] == ["Jump"]


def test_per_class_ap(tmp_path: Path) -> None:
    fig = plot_per_class_ap({"Run": 40.0, "Jump": 10.0, "Throw": 25.0, "Dive": float("nan")})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Jump", "Throw", "Run"]  # best on top
    assert [p.get_width() for p in ax.patches] == [10.0, 25.0, 40.0]
    (mean,) = ax.get_lines()
    assert mean.get_xdata()[0] == pytest.approx(25.0)
    assert save_figure(fig, tmp_path / "ap.png").stat().st_size > 0


def test_error_breakdown_figure(tmp_path: Path) -> None:
    gt = _gt()
    dets = _dets().to_seconds(SNIP)
    res = error_breakdown(dets, gt, tiou=0.5, top_k_factor=None)
    fig = plot_error_breakdown(res)
    ax_fp, ax_fn = fig.axes
    heights = [p.get_height() for p in ax_fp.patches]
    assert len(heights) == 6 and sum(heights) == pytest.approx(100.0)
    assert len(ax_fn.patches) == len(res.bin_names)
    rates = [p.get_height() for p in ax_fn.patches]
    expected = [0.0 if np.isnan(r) else 100 * r for r in res.false_negative_rates.values()]
    assert rates == pytest.approx(expected)
    assert save_figure(fig, tmp_path / "err.png").stat().st_size > 0


CSV = """epoch,step,train/loss_total,train/loss_cls,val/mAP@0.1,val/mAP@0.5,val/AVG,val/AVG(0.1:0.5),val/cls_mAP
0,9,2.0,1.5,,,,,
0,9,,,30.0,10.0,20.0,20.0,55.0
1,19,1.5,1.0,,,,,
1,19,,,40.0,15.0,27.5,27.5,60.0
2,29,1.2,0.8,,,,,
"""


def test_map_curves(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(CSV)
    fig = plot_map_curves(path)
    ax_map, ax_loss = fig.axes
    lines = {line.get_label(): line for line in ax_map.get_lines()}
    assert set(lines) == {"mAP@0.1", "mAP@0.5", "AVG", "AVG(0.1:0.5)"}  # cls_mAP is not a detection mAP
    np.testing.assert_array_equal(lines["mAP@0.5"].get_xdata(), [0, 1])
    np.testing.assert_array_equal(lines["mAP@0.5"].get_ydata(), [10.0, 15.0])
    losses = {line.get_label(): line for line in ax_loss.get_lines()}
    np.testing.assert_array_equal(losses["train/loss_total"].get_ydata(), [2.0, 1.5, 1.2])
    np.testing.assert_array_equal(losses["train/loss_total"].get_xdata(), [0, 1, 2])
    assert save_figure(fig, tmp_path / "curves.png").stat().st_size > 0


def test_map_curves_without_loss_and_without_metrics(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val/mAP@0.3\n0,1,5.0\n1,2,\n2,3,7.5\n")
    fig = plot_map_curves(path)
    assert len(fig.axes) == 1
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_ydata(), [5.0, 7.5])
    path.write_text("epoch,step,lr\n0,1,0.1\n")
    with pytest.raises(ValueError, match="no 'val/mAP"):
        plot_map_curves(path)
