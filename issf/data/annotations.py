"""Ground-truth annotations of one dataset split, held in memory as flat numpy arrays.

This is the single in-memory form of temporal annotations that the HDF5 reader produces and
that localization, the mAP metric, plots and reports consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GroundTruth:
    """Temporal ground truth of a set of videos.

    Videos are addressed by their position in ``video_ids`` ("video index"). Segments and
    ambiguous intervals are in seconds. ``labels`` is the video-level multi-hot label matrix
    used for weak supervision and classification mAP.
    """

    class_names: list[str]
    video_ids: list[str]
    durations: np.ndarray  # float64 [V] seconds
    segments: np.ndarray  # float64 [S, 2] seconds (start, end)
    segment_video: np.ndarray  # int64 [S] video index
    segment_label: np.ndarray  # int64 [S] class index
    labels: np.ndarray | None = None  # uint8 [V, C] video-level labels
    ambiguous: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # float64 [A, 2]
    ambiguous_video: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int64 [A]

    def __post_init__(self) -> None:
        self.durations = np.asarray(self.durations, dtype=np.float64).reshape(-1)
        self.segments = np.asarray(self.segments, dtype=np.float64).reshape(-1, 2)
        self.segment_video = np.asarray(self.segment_video, dtype=np.int64).reshape(-1)
        self.segment_label = np.asarray(self.segment_label, dtype=np.int64).reshape(-1)
        self.ambiguous = np.asarray(self.ambiguous, dtype=np.float64).reshape(-1, 2)
        self.ambiguous_video = np.asarray(self.ambiguous_video, dtype=np.int64).reshape(-1)
        if self.labels is None:
            self.labels = self.labels_from_segments()
        self.labels = np.asarray(self.labels, dtype=np.uint8).reshape(len(self.video_ids), len(self.class_names))
        n_seg = len(self.segments)
        if not (len(self.segment_video) == len(self.segment_label) == n_seg):
            raise ValueError(
                f"GroundTruth: segments ({n_seg}), segment_video ({len(self.segment_video)}) and "
                f"segment_label ({len(self.segment_label)}) must have the same length"
            )
        if len(self.durations) != len(self.video_ids):
            raise ValueError(f"GroundTruth: {len(self.durations)} durations for {len(self.video_ids)} videos")
        if len(self.ambiguous_video) != len(self.ambiguous):
            raise ValueError("GroundTruth: ambiguous and ambiguous_video differ in length")

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels_from_segments(self) -> np.ndarray:
        """Multi-hot [V, C] labels derived from the segment labels."""
        labels = np.zeros((len(self.video_ids), len(self.class_names)), dtype=np.uint8)
        labels[self.segment_video, self.segment_label] = 1
        return labels

    def video_index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.video_ids)}

    def subset(self, video_indices: np.ndarray | list[int]) -> GroundTruth:
        """Ground truth restricted to some videos, re-indexed in the given order."""
        idx = np.asarray(video_indices, dtype=np.int64)
        remap = np.full(self.num_videos, -1, dtype=np.int64)
        remap[idx] = np.arange(len(idx))
        seg_keep = remap[self.segment_video] >= 0
        amb_keep = remap[self.ambiguous_video] >= 0
        return GroundTruth(
            class_names=list(self.class_names),
            video_ids=[self.video_ids[i] for i in idx],
            durations=self.durations[idx],
            segments=self.segments[seg_keep],
            segment_video=remap[self.segment_video[seg_keep]],
            segment_label=self.segment_label[seg_keep],
            labels=self.labels[idx],
            ambiguous=self.ambiguous[amb_keep],
            ambiguous_video=remap[self.ambiguous_video[amb_keep]],
        )
