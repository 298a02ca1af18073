"""Intervals that only touch do not overlap (ambiguous filter, error analysis); half-open snippet
ranges and seconds alike."""

from __future__ import annotations

import numpy as np

from issf.eval.intervals import overlaps_any


def test_touching_intervals_do_not_overlap():
    # video 0: [2, 5) touches [5, 8) and [0, 2); video 1: [4, 6) overlaps [5.9, 9) by 0.1
    video = np.array([0, 0, 1, 1])
    start = np.array([2.0, 8.0, 4.0, 6.0])
    end = np.array([5.0, 9.0, 6.0, 7.0])
    got = overlaps_any(video, start, end, np.array([0, 0, 1]), np.array([5.0, 0.0, 5.9]), np.array([8.0, 2.0, 9.0]))
    assert got.tolist() == [False, False, True, True]


def test_touching_snippet_ranges_do_not_overlap_and_other_videos_never_do():
    got = overlaps_any(np.array([0, 0, 2]), np.array([3, 3, 0]), np.array([5, 6, 50]),
                       np.array([0, 1]), np.array([5, 0]), np.array([9, 99]))
    assert got.tolist() == [False, True, False]
