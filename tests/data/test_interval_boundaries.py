"""Boundary values of the converters' interval checks: a segment ending exactly at the duration is
inside, one starting exactly at the duration is past the end (kept as zero-length or dropped)."""

from __future__ import annotations

import numpy as np
import pytest

from issf.data.prepare.validate import clip_intervals, empty_interval_warning


def clip(bounds, duration=10.0, past_end="keep"):
    return clip_intervals(np.asarray(bounds, dtype=np.float64).reshape(-1, 2), duration, past_end=past_end,
                          file="f", video="v", fld="segments", kind="segment_outside")


@pytest.mark.parametrize("past_end", ["keep", "drop"])
def test_intervals_touching_the_ends_are_inside(past_end):
    bounds = [[0.0, 10.0], [0.0, 0.0], [10.0, 10.0], [3.0, 10.0]]
    clipped, keep, n_out, n_past, warning = clip(bounds, past_end=past_end)
    np.testing.assert_array_equal(clipped, bounds)
    assert keep.all() and (n_out, n_past, warning) == (0, 0, None)


def test_a_segment_starting_exactly_at_the_duration_is_past_the_end():
    bounds = [[2.0, 4.0], [10.0, 12.0], [9.0, 12.0], [-1.0, 3.0], [11.0, 13.0]]
    clipped, keep, n_out, n_past, warning = clip(bounds, past_end="keep")
    np.testing.assert_array_equal(clipped, [[2, 4], [10, 10], [9, 10], [0, 3], [10, 10]])
    assert keep.all() and (n_out, n_past) == (4, 2)
    assert "4 of 5 intervals outside" in warning.message and "2 start at or after the end" in warning.message

    clipped, keep, n_out, n_past, _ = clip(bounds, past_end="drop")
    np.testing.assert_array_equal(clipped, [[2, 4], [9, 10], [0, 3]])
    assert keep.tolist() == [True, False, True, True, False] and (n_out, n_past) == (4, 2)


def test_only_zero_length_intervals_are_empty():
    bounds = np.array([[1.0, 1.0], [1.0, 1.0 + 1e-9], [2.0, 3.0]])
    warning = empty_interval_warning(bounds, file="f", video="v", fld="segments")
    assert warning is not None and warning.message.startswith("1 of 3 intervals")
