"""ActivityNet results JSON: round trip, validation errors, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from issf.data.annotations import GroundTruth
from issf.eval.detections import Detections, load_detections, save_detections

CLASSES = ["Alpha", "Beta", "Gamma"]
VIDEOS = ["vid_a", "vid_b", "vid_c"]


@pytest.fixture
def gt() -> GroundTruth:
    return GroundTruth(
        class_names=CLASSES,
        video_ids=VIDEOS,
        durations=[10.0, 20.0, 30.0],
        segments=[[1.0, 2.0], [3.0, 4.5]],
        segment_video=[0, 2],
        segment_label=[1, 2],
    )


@pytest.fixture
def det() -> Detections:
    return Detections(
        video=[2, 0, 0, 2],
        start=[0.1, 1.0 / 3.0, 5.0, 29.5],
        end=[2.5, 2.0, 5.0, 30.0],
        label=[1, 0, 2, 1],
        score=[0.9, -0.25, 1e-12, 0.123456789012345],
        units="seconds",
    )


def _rows(d: Detections) -> list[tuple]:
    return sorted(zip(d.video.tolist(), d.start.tolist(), d.end.tolist(), d.label.tolist(), d.score.tolist()))


def test_round_trip(tmp_path: Path, gt: GroundTruth, det: Detections) -> None:
    path = save_detections(
        tmp_path / "out" / "detections.json", det, VIDEOS, CLASSES, {"used": True, "details": "x"}
    )
    data = json.loads(path.read_text())
    assert data["version"] == "VERSION 1.3"
    assert data["external_data"] == {"used": True, "details": "x"}
    assert list(data["results"]) == VIDEOS and data["results"]["vid_b"] == []
    assert data["results"]["vid_a"][0] == {"label": "Alpha", "score": -0.25, "segment": [1.0 / 3.0, 2.0]}
    back = load_detections(path, gt)
    assert back.units == "seconds"
    assert _rows(back) == _rows(det)  # exact: floats survive JSON unchanged
    assert [p.name for p in path.parent.iterdir()] == ["detections.json"]


def test_round_trip_empty_and_default_external(tmp_path: Path, gt: GroundTruth) -> None:
    path = save_detections(tmp_path / "d.json", Detections(units="seconds"), VIDEOS, CLASSES)
    data = json.loads(path.read_text())
    assert data["external_data"] == {"used": False, "details": ""}
    assert len(load_detections(path, gt)) == 0


def test_save_requires_seconds_and_valid_indices(tmp_path: Path, det: Detections) -> None:
    path = tmp_path / "d.json"
    with pytest.raises(ValueError, match="to_seconds"):
        save_detections(path, Detections([0], [0.0], [1.0], [0], [0.5]), VIDEOS, CLASSES)
    with pytest.raises(ValueError, match="video index"):
        save_detections(path, det, VIDEOS[:2], CLASSES)
    with pytest.raises(ValueError, match="label index"):
        save_detections(path, det, VIDEOS, CLASSES[:1])
    nan = Detections([1], [0.0], [1.0], [0], [float("nan")], units="seconds")
    with pytest.raises(ValueError, match="vid_b"):
        save_detections(path, nan, VIDEOS, CLASSES)
    assert not path.exists()


def test_failing_save_leaves_no_partial_file(tmp_path: Path, gt: GroundTruth, det: Detections) -> None:
    path = save_detections(tmp_path / "d.json", det, VIDEOS, CLASSES)
    before = path.read_bytes()
    with pytest.raises(TypeError):  # fails while writing: the external data is not JSON
        save_detections(path, det, VIDEOS, CLASSES, external_data={"bad": {1, 2}})
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]  # no temporary left
    with pytest.raises(TypeError):
        save_detections(tmp_path / "new.json", det, VIDEOS, CLASSES, external_data={"bad": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]


GOOD = {"label": "Beta", "score": 0.5, "segment": [1.0, 2.0]}


@pytest.mark.parametrize(
    ("video", "entry", "field"),
    [
        ("vid_unknown", GOOD, "unknown video id"),
        ("vid_b", {**GOOD, "label": "Delta"}, "field 'label'"),
        ("vid_b", {**GOOD, "label": ["Beta"]}, "field 'label'"),
        ("vid_b", {**GOOD, "segment": [1.0]}, "field 'segment'"),
        ("vid_b", {**GOOD, "segment": [1.0, 2.0, 3.0]}, "field 'segment'"),
        ("vid_b", {**GOOD, "segment": "1-2"}, "field 'segment'"),
        ("vid_b", {**GOOD, "segment": [1.0, "2"]}, "field 'segment'"),
        ("vid_b", {**GOOD, "segment": [float("nan"), 2.0]}, "field 'segment'"),
        ("vid_b", {**GOOD, "segment": [1.0, float("inf")]}, "field 'segment'"),
        ("vid_b", {**GOOD, "segment": [3.0, 2.0]}, "field 'segment'"),
        ("vid_b", {"score": 0.5, "segment": [1.0, 2.0]}, "missing field 'label'"),
        ("vid_b", {"label": "Beta", "segment": [1.0, 2.0]}, "missing field 'score'"),
        ("vid_b", {"label": "Beta", "score": 0.5}, "missing field 'segment'"),
        ("vid_b", {**GOOD, "score": "high"}, "field 'score'"),
        ("vid_b", {**GOOD, "score": None}, "field 'score'"),
        ("vid_b", {**GOOD, "score": True}, "field 'score'"),
        ("vid_b", {**GOOD, "score": float("nan")}, "field 'score'"),
        ("vid_b", "not an object", "detection 1"),
    ],
)
def test_malformed_entries(tmp_path: Path, gt: GroundTruth, video: str, entry, field: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"version": "VERSION 1.3", "results": {"vid_a": [GOOD], video: [GOOD, entry]}})
    )
    with pytest.raises(ValueError) as err:
        load_detections(path, gt)
    msg = str(err.value)
    assert str(path) in msg and repr(video) in msg and field in msg, msg


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("{", "not valid JSON"),
        ('{"version": "VERSION 1.3"}', "'results'"),
        ('{"results": [1, 2]}', "'results'"),
        ('{"results": {"vid_a": {"label": "Beta"}}}', "list of detections"),
    ],
)
def test_malformed_files(tmp_path: Path, gt: GroundTruth, content: str, field: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_detections(path, gt)
    assert str(path) in str(err.value) and field in str(err.value)


def test_load_from_localize_output(tmp_path: Path, gt: GroundTruth) -> None:
    det = Detections([1, 1], [0.0, 10.0], [4.0, 40.0], [2, 0], [0.5, 0.25]).to_seconds(0.64, gt.durations)
    back = load_detections(save_detections(tmp_path / "d.json", det, VIDEOS, CLASSES), gt)
    np.testing.assert_array_equal(back.end, [2.56, 20.0])  # second one clipped to the duration
    np.testing.assert_array_equal(back.label, [2, 0])
