"""Localization with several classes, where a class's CAS column, its position among the selected
classes and its video score all differ: every detection is that of its own class's column alone."""

from __future__ import annotations

import numpy as np
import pytest

from issf.eval.localize import LocalizationConfig, localize, localize_video

# class 1 is not selected (video score below 0.1), so class 2 is the second selected column
VIDEO_SCORES = np.array([0.8, 0.05, 0.4])


def cas_of_three_classes() -> np.ndarray:
    cas = np.zeros((14, 3))
    cas[1:4, 0] = 0.5
    cas[9:11, 0] = 0.35
    cas[5:8, 1] = 0.9  # strong but its class is not selected
    cas[7:12, 2] = [0.3, 0.6, 0.6, 0.45, 0.25]
    return cas


def one_class_at_a_time(cas: np.ndarray, scores: np.ndarray, cfg: LocalizationConfig) -> list[tuple]:
    rows = []
    for c in np.flatnonzero(scores >= cfg.class_threshold):
        d = localize_video(cas[:, [c]], scores[[c]], cfg)  # one column: column index = class index = 0
        rows += [(c, s, e, sc) for s, e, sc in zip(d.start, d.end, d.score)]
    return sorted(rows)


@pytest.mark.parametrize("score", ["contrast", "contrast_x_video"])
@pytest.mark.parametrize("compat", [True, False])
def test_each_class_is_localized_on_its_own_column_with_its_own_video_score(score, compat):
    cas = cas_of_three_classes()
    cfg = LocalizationConfig(cas_thresholds=(0.2, 0.4), score=score, compat_end_plus_one=compat)
    d = localize_video(cas, VIDEO_SCORES, cfg, video=5)
    got = sorted(zip(d.label.tolist(), d.start.tolist(), d.end.tolist(), d.score.tolist()))
    expected = one_class_at_a_time(cas, VIDEO_SCORES, cfg)
    assert [r[:3] for r in got] == [r[:3] for r in expected]
    assert [r[3] for r in got] == pytest.approx([r[3] for r in expected])
    assert set(d.label.tolist()) == {0, 2} and set(d.video.tolist()) == {5}


def test_contrast_x_video_multiplies_by_the_detected_class_score():
    cas = cas_of_three_classes()
    base = localize_video(cas, VIDEO_SCORES, LocalizationConfig(cas_thresholds=(0.2,)))
    scaled = localize_video(cas, VIDEO_SCORES, LocalizationConfig(cas_thresholds=(0.2,), score="contrast_x_video"))
    assert base.label.tolist() == scaled.label.tolist() and 2 in base.label.tolist()
    np.testing.assert_allclose(scaled.score, base.score * VIDEO_SCORES[base.label])


def test_batched_localization_keeps_each_videos_classes_apart():
    cas = cas_of_three_classes()
    other = np.roll(cas[:, ::-1], 2, axis=0)  # another video: classes reversed and shifted
    scores = np.stack([VIDEO_SCORES, VIDEO_SCORES[::-1]])
    cfg = LocalizationConfig(cas_thresholds=(0.2,), score="contrast_x_video")
    d = localize(np.stack([cas, other]), scores, cfg, lengths=[14, 12], videos=[7, 3])
    for i, (video, x, length) in enumerate(((7, cas, 14), (3, other, 12))):
        rows = d.select(d.video == video)
        got = sorted(zip(rows.label.tolist(), rows.start.tolist(), rows.end.tolist()))
        assert got == [r[:3] for r in one_class_at_a_time(x[:length], scores[i], cfg)]
