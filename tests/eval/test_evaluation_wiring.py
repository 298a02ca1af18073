"""The evaluation path EvaluationConfig -> VideoEvaluator -> TemporalDetectionMAP passes every protocol
option on, on data where the option changes the result (compared with the functional metric), and
an evaluator reused for a second evaluation scores that evaluation alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from issf.data.annotations import GroundTruth
from issf.eval.detections import Detections
from issf.eval.evaluator import EvaluationConfig, VideoEvaluator
from issf.eval.functional import detection_average_precision

THRESHOLDS = [0.3, 0.5, 0.7]


def config(**options) -> EvaluationConfig:
    return EvaluationConfig(tiou_thresholds=THRESHOLDS, average_ranges={"AVG(0.3:0.7)": [0.3, 0.7]}, **options)


def ambiguous_case() -> tuple[GroundTruth, Detections]:
    """Two videos with one instance each and an ambiguous interval each; the highest-scored
    detection of each class lies inside that class's video's ambiguous interval."""
    gt = GroundTruth(
        ["a", "b"], ["v0", "v1"], [20.0, 20.0], [[2.0, 6.0], [10.0, 14.0]], [0, 1], [0, 1],
        ambiguous=[[12.0, 16.0], [1.0, 4.0]], ambiguous_video=[0, 1],
    )
    dets = Detections(
        video=[0, 0, 1, 1], start=[12.2, 2.0, 1.0, 10.0], end=[15.8, 6.0, 4.0, 14.0], label=[0, 0, 1, 1],
        score=[0.95, 0.6, 0.9, 0.5], units="seconds",
    )
    return gt, dets


def functional_ap(gt: GroundTruth, dets: Detections, **options) -> np.ndarray:
    return detection_average_precision(gt, dets.video, dets.start, dets.end, dets.label, dets.score, THRESHOLDS,
                                       **options)


def evaluator_per_class(evaluator: VideoEvaluator) -> dict[str, float]:
    return evaluator.compute()["per_class"]


def as_per_class(gt: GroundTruth, ap: np.ndarray) -> dict[str, float]:
    return {name: float(np.mean(ap[c]) * 100.0) for c, name in enumerate(gt.class_names) if not np.isnan(ap[c]).all()}


@pytest.mark.parametrize("protocol", ["anet", "wtalc"])
@pytest.mark.parametrize("filter_ambiguous", [True, False])
def test_the_ambiguous_filter_reaches_the_metric(protocol, filter_ambiguous):
    gt, dets = ambiguous_case()
    on = functional_ap(gt, dets, protocol=protocol, filter_ambiguous=True)
    off = functional_ap(gt, dets, protocol=protocol, filter_ambiguous=False)
    assert np.nanmean(on) == pytest.approx(1.0) and np.nanmean(off) < 0.75  # the option matters here

    cfg = config(protocol=protocol, filter_ambiguous=filter_ambiguous)
    evaluator = VideoEvaluator(gt, cfg, 0.64)
    evaluator.add(dets, np.array([0, 1]))
    expected = on if filter_ambiguous else off
    assert evaluator_per_class(evaluator) == pytest.approx(as_per_class(gt, expected))
    metric = cfg.build_metric(gt, 0.64)
    assert metric.filter_ambiguous is filter_ambiguous and metric.protocol == protocol


def test_the_default_evaluation_filters_ambiguous_intervals():
    gt, dets = ambiguous_case()
    evaluator = VideoEvaluator(gt, config(), 0.64)
    evaluator.add(dets, np.array([0, 1]))
    assert evaluator.compute()["summary"]["AVG"] == pytest.approx(100.0)


def test_touching_an_ambiguous_interval_is_not_overlapping_it():
    """A detection that only touches an ambiguous interval (shared end point) is scored."""
    gt, _ = ambiguous_case()
    touching = Detections(video=[0, 0], start=[6.0, 2.0], end=[12.0, 6.0], label=[0, 0], score=[0.9, 0.6],
                          units="seconds")
    on = functional_ap(gt, touching, filter_ambiguous=True)
    off = functional_ap(gt, touching, filter_ambiguous=False)
    np.testing.assert_array_equal(on, off)
    assert on[0].mean() == pytest.approx(0.5)  # the false positive at [6, 12) still ranks first


@pytest.mark.parametrize("return0", [True, False])
def test_the_wtalc_return0_option_reaches_the_metric(return0):
    gt, dets = ambiguous_case()
    only_a = dets.select(dets.label == 0)  # class b has ground truth but no detection
    cfg = config(protocol="wtalc", compat_locmap_return0=return0)
    evaluator = VideoEvaluator(gt, cfg, 0.64)
    evaluator.add(only_a, np.array([0, 1]))
    expected = functional_ap(gt, only_a, protocol="wtalc", filter_ambiguous=True, compat_locmap_return0=return0)
    assert evaluator_per_class(evaluator) == pytest.approx(as_per_class(gt, expected))
    assert evaluator_per_class(evaluator)["a"] == (0.0 if return0 else pytest.approx(100.0))


# ---------------------------------------------------------------- clipping to the annotated duration
SNIPPET = 0.64


def past_the_end_case() -> tuple[GroundTruth, torch.Tensor]:
    """One video annotated as 10 s long whose features run 25 snippets (16 s): class a fires on
    snippets [12, 22) (across the end), class b on [17, 24) (entirely after the end)."""
    gt = GroundTruth(["a", "b"], ["v0"], [10.0], [[12 * SNIPPET, 10.0]], [0], [0])
    cas = torch.zeros(1, 25, 2)
    cas[0, 12:22, 0] = 0.5
    cas[0, 17:24, 1] = 0.5
    return gt, cas


@pytest.mark.parametrize("protocol", ["anet", "wtalc"])
def test_each_protocol_clips_to_the_duration_as_its_official_code(protocol):
    gt, cas = past_the_end_case()
    cfg = config(protocol=protocol, filter_ambiguous=False)
    evaluator = VideoEvaluator(gt, cfg, SNIPPET)
    evaluator.update(torch.tensor([0]), torch.tensor([[0.9, 0.9]]), cas, torch.tensor([25]))
    dets = evaluator.detections()
    rows = sorted(zip(dets.label.tolist(), dets.start.tolist(), dets.end.tolist()))
    if protocol == "anet":  # seconds clipped to [0, 10]; the detection entirely past the end is dropped
        assert rows == [(0, pytest.approx(12 * SNIPPET), pytest.approx(10.0))]
    else:  # W-TALC scores the unclipped snippet ranges (official +1 end)
        assert rows == [(0, pytest.approx(12 * SNIPPET), pytest.approx(23 * SNIPPET)),
                        (1, pytest.approx(17 * SNIPPET), pytest.approx(25 * SNIPPET))]
    expected = functional_ap(gt, dets, protocol=protocol)
    assert evaluator_per_class(evaluator) == pytest.approx(as_per_class(gt, expected))
    # the clip decides the score: the clipped detection is exact, the unclipped one is not at tIoU 0.5
    assert evaluator_per_class(evaluator)["a"] == (pytest.approx(100.0) if protocol == "anet" else
                                                  pytest.approx(100.0 / 3))


@pytest.mark.filterwarnings("ignore:1 of 1 evaluated videos got no detection")
def test_a_detection_starting_exactly_at_the_duration_is_dropped():
    gt = GroundTruth(["a"], ["v0"], [6.4], [[0.0, 3.2]], [0], [0])
    evaluator = VideoEvaluator(gt, config(protocol="anet"), SNIPPET)
    cas = torch.zeros(1, 14, 1)
    cas[0, 10:13, 0] = 0.5  # snippet 10 starts at 6.4 s, exactly the annotated end
    evaluator.update(torch.tensor([0]), torch.tensor([[0.9]]), cas, torch.tensor([14]))
    assert len(evaluator.detections()) == 0
    assert evaluator.compute()["summary"]["AVG"] == 0.0


# ---------------------------------------------------------------- one evaluator, several evaluations
def good_and_bad_batches(gt: GroundTruth):
    """(cas, video scores) of a perfect and of a poor prediction of the two videos of ``ambiguous_case``."""
    good = torch.zeros(2, 32, 2)
    good[0, 3:9, 0] = 0.5  # [3, 9) + the official +1 end -> [1.92, 6.4) s of v0's [2, 6]
    good[1, 16:22, 1] = 0.5
    bad = torch.zeros(2, 32, 2)
    bad[0, 25:30, 0] = 0.5
    bad[1, 0:4, 1] = 0.5
    scores = torch.tensor([[0.9, 0.0], [0.0, 0.9]])
    return (good, scores), (bad, scores.flip(1) * 0.5 + scores * 0.5)


def feed(evaluator: VideoEvaluator, batch) -> None:
    cas, scores = batch
    evaluator.update(torch.tensor([0, 1]), scores, cas, torch.tensor([32, 32]))


@pytest.mark.parametrize("protocol", ["anet", "wtalc"])
def test_a_second_evaluation_reflects_only_the_second_predictions(protocol):
    gt, _ = ambiguous_case()
    good, bad = good_and_bad_batches(gt)
    cfg = config(protocol=protocol)
    fresh = VideoEvaluator(gt, cfg, SNIPPET)
    feed(fresh, bad)
    expected = fresh.result()

    reused = VideoEvaluator(gt, cfg, SNIPPET)
    feed(reused, good)
    first = reused.result()
    assert first.summary["AVG"] > expected.summary["AVG"] + 20  # the two evaluations differ
    reused.reset()
    feed(reused, bad)
    second = reused.result()
    assert second.summary == pytest.approx(expected.summary)
    assert second.per_class == pytest.approx(expected.per_class)
    assert second.baseline == pytest.approx(expected.baseline)
    assert len(second.detections) == len(expected.detections)
    np.testing.assert_allclose(second.detections.start, expected.detections.start)
