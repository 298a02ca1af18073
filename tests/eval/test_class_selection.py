"""Which classes of a video are localized (threshold, relative, top-k), and the warning when an
evaluation finds no detection in most videos."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from issf.data.annotations import GroundTruth
from issf.eval.evaluator import EvaluationConfig, VideoEvaluator
from issf.eval.localize import LocalizationConfig, localize_video, select_classes


def test_select_classes_by_rule():
    scores = np.array([0.02, 0.30, 0.05, 0.16, 0.01])
    assert select_classes(scores, LocalizationConfig()).tolist() == [1, 3]  # >= 0.1
    assert select_classes(scores, LocalizationConfig(class_selection="top_k", class_top_k=3)).tolist() == [1, 2, 3]
    relative = LocalizationConfig(class_selection="relative", class_relative=0.5)
    assert select_classes(scores, relative).tolist() == [1, 3]  # >= 0.15
    assert select_classes(scores / 10, relative).tolist() == [1, 3]  # scale-free
    assert select_classes(scores / 10, LocalizationConfig()).tolist() == []
    with pytest.raises(ValueError, match="class_selection must be one of"):
        LocalizationConfig(class_selection="best")
    with pytest.raises(ValueError, match="class_top_k"):
        LocalizationConfig(class_selection="top_k", class_top_k=0)


def test_top_k_localizes_only_the_chosen_classes():
    cas = np.zeros((30, 4))
    cas[5:12, 2] = 0.03
    cas[15:25, 0] = 0.02
    dets = localize_video(cas, np.array([0.01, 0.002, 0.03, 0.001]),
                          LocalizationConfig(class_selection="top_k", class_top_k=1))
    assert set(dets.label.tolist()) == {2}
    assert dets.start.min() == 5


def flat_scores_evaluation(localization: dict) -> tuple[dict, list[warnings.WarningMessage]]:
    """Four videos of a 200-class problem whose softmax scores are all below 0.1."""
    classes = [f"c{i}" for i in range(200)]
    gt = GroundTruth(classes, [f"v{i}" for i in range(4)], durations=np.full(4, 64.0),
                     segments=np.array([[6.4, 19.2]] * 4), segment_video=np.arange(4), segment_label=np.arange(4))
    cfg = EvaluationConfig(tiou_thresholds=[0.5], localization=localization)
    evaluator = VideoEvaluator(gt, cfg, snippet_seconds=0.64)
    scores = torch.full((4, 200), 0.9 / 199)
    cas = torch.zeros(4, 100, 200)
    for v in range(4):
        scores[v, v] = 0.04  # the top class, far below the 0.1 threshold
        cas[v, 10:30, v] = 0.03
    evaluator.update(torch.arange(4), scores, cas, torch.full((4,), 100))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluator.compute()
    return result, caught


def test_no_detection_in_most_videos_warns_with_the_threshold_and_score_range():
    result, caught = flat_scores_evaluation({"class_selection": "threshold"})
    assert len(result["detections"]) == 0
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "4 of 4 evaluated videos got no detection" in messages[0]
    assert "class_threshold=0.1" in messages[0] and "0.0400..0.0400" in messages[0]


def activitynet_localization(tmp_path) -> dict:
    from omegaconf import OmegaConf

    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path, "experiment=anet_full")
    return OmegaConf.to_container(cfg.data.evaluation.localization, resolve=True)


@pytest.mark.parametrize("selection", ["top_k", "activitynet_default"])
def test_scale_free_selection_still_detects_with_flat_scores(tmp_path, selection):
    localization = {"class_selection": "top_k"}
    if selection == "activitynet_default":
        localization = activitynet_localization(tmp_path)
        assert localization["class_selection"] != "threshold"
    result, caught = flat_scores_evaluation(localization)
    assert not [w for w in caught if "no detection" in str(w.message)]
    assert sorted(set(result["detections"].video.tolist())) == [0, 1, 2, 3]
    assert result["summary"]["mAP@0.5"] == pytest.approx(100.0)


def test_a_cas_below_every_threshold_falls_back_to_the_top_class_over_the_whole_video():
    from issf.eval.localize import LocalizationConfig, localize_video

    cas = np.full((30, 3), 0.0005, np.float32)  # a flat softmax-like CAS: crosses no CAS threshold
    scores = np.array([0.01, 0.02, 0.005], np.float32)
    assert len(localize_video(cas, scores, LocalizationConfig(class_selection="relative"), video=4)) == 0
    dets = localize_video(cas, scores, LocalizationConfig(class_selection="relative", fallback_whole_video=True), 4)
    assert (dets.video.tolist(), dets.start.tolist(), dets.end.tolist(), dets.label.tolist()) == ([4], [0.0], [30.0], [1])
    assert dets.score.tolist() == pytest.approx([0.02])
    cas[5:12, 1] = 0.2  # with proposals, no fallback row is added
    dets = localize_video(cas, scores, LocalizationConfig(class_selection="relative", fallback_whole_video=True), 4)
    assert len(dets) >= 1 and not np.any((dets.start == 0) & (dets.end == 30))
