"""The project's HDF5 feature file: schema, atomic streaming writer and lazy reader.

Layout (schema version 1)::

    /features              float16|float32 [total_snippets, D], chunked along time
    /video/offsets         int64 [V+1]   snippets of video v: features[offsets[v]:offsets[v+1]]
    /video/ids             str [V]
    /video/subset          str [V]       e.g. "train" | "test" (dataset splits map names to these)
    /video/duration        float64 [V]   seconds
    /video/labels          uint8 [V, C]  video-level multi-hot labels (weak supervision)
    /segments/bounds       float64 [S, 2] seconds
    /segments/video        int32 [S]
    /segments/label        int16 [S]
    /ambiguous/bounds      float64 [A, 2] seconds
    /ambiguous/video       int32 [A]
    attrs: schema_version, classes, snippet_seconds, feature_name, feature_dim, source, checksum,
           labelled (bool; absent in files written before it: labelled)

``/segments`` and ``/ambiguous`` are groups (an HDF5 dataset cannot hold children), so the
interval arrays live in ``bounds`` beside their index arrays.

An unlabelled file (``labelled`` false: features prepared with ``data.prepare.annotations=none``
for ``task=predict``) has no classes (``classes`` is ``[]``, ``video/labels`` is [V, 0]), empty
``/segments`` and ``/ambiguous``, and durations taken from the source or as T * snippet_seconds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from issf.data.annotations import GroundTruth
from issf.utils.io import remove_stale_temporaries, temporary_path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_STR = h5py.string_dtype("utf-8")


@dataclass
class VideoEntry:
    """One video as it goes into a feature file."""

    video_id: str
    subset: str
    duration: float
    features: np.ndarray  # [T, D]
    labels: np.ndarray  # multi-hot [C]
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [S, 2] seconds
    segment_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [S]
    ambiguous: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [A, 2] seconds


def write_feature_file(
    path: str | os.PathLike,
    videos: Iterable[VideoEntry],
    class_names: list[str],
    *,
    snippet_seconds: float,
    feature_name: str,
    source: Any = None,
    dtype: str = "float32",
    overwrite: bool = False,
    extra_attrs: dict[str, Any] | None = None,
    labelled: bool = True,
) -> Path:
    """Stream videos into ``path``; the file appears only when it is complete.

    Features are appended video by video (memory stays at one video); the file is written to a
    temporary name next to ``path`` and renamed into place at the end, so an error or an
    interruption never leaves a partial file behind. A SHA-256 of features and annotations is
    stored in the ``checksum`` attribute. ``labelled=False`` marks a file without annotations
    (``class_names`` empty, no segments or ambiguous intervals).
    """
    path = Path(path)
    if not labelled and class_names:
        raise ValueError(f"{path}: an unlabelled feature file has no classes, got {len(class_names)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(path.parent, path.name):  # also when the write is refused
        log.warning(f"removed {stale}, left by an interrupted process")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; add data.prepare.overwrite=true (overwrite=True in Python) to replace it")
    tmp = temporary_path(path)
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.float16, np.float32):
        raise ValueError(f"feature dtype must be float16 or float32, got {dtype}")
    digest = hashlib.sha256()
    ids: list[str] = []
    subsets: list[str] = []
    durations: list[float] = []
    labels: list[np.ndarray] = []
    offsets = [0]
    seg_bounds, seg_video, seg_label, amb_bounds, amb_video = [], [], [], [], []
    try:
        with h5py.File(tmp, "w") as f:
            feats = None
            for v, entry in enumerate(videos):
                x = np.asarray(entry.features)
                if x.ndim != 2 or x.shape[0] == 0:
                    raise ValueError(f"video {entry.video_id}: features must be [T>0, D], got {x.shape}")
                if feats is None:
                    dim = x.shape[1]
                    feats = f.create_dataset(
                        "features", shape=(0, dim), maxshape=(None, dim), dtype=np_dtype,
                        chunks=(max(1, min(256, (1 << 20) // (dim * np_dtype.itemsize))), dim),
                    )
                elif x.shape[1] != feats.shape[1]:
                    raise ValueError(
                        f"video {entry.video_id}: feature dim {x.shape[1]} differs from {feats.shape[1]}"
                    )
                xs = x.astype(np_dtype, copy=False)
                _ensure_space(tmp, 2 * xs.nbytes, path, entry.video_id)
                n0 = feats.shape[0]
                feats.resize(n0 + len(xs), axis=0)
                feats[n0:] = xs
                digest.update(np.ascontiguousarray(xs).tobytes())
                offsets.append(n0 + len(xs))
                ids.append(str(entry.video_id))
                subsets.append(str(entry.subset))
                durations.append(float(entry.duration))
                labels.append(np.asarray(entry.labels, dtype=np.uint8).reshape(len(class_names)))
                segs = np.asarray(entry.segments, dtype=np.float64).reshape(-1, 2)
                seg_bounds.append(segs)
                seg_video.append(np.full(len(segs), v, dtype=np.int32))
                seg_label.append(np.asarray(entry.segment_labels, dtype=np.int16).reshape(-1))
                amb = np.asarray(entry.ambiguous, dtype=np.float64).reshape(-1, 2)
                amb_bounds.append(amb)
                amb_video.append(np.full(len(amb), v, dtype=np.int32))
            if feats is None:
                raise ValueError("no videos to write")
            if len(set(ids)) != len(ids):
                dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
                raise ValueError(f"duplicate video ids: {dup}")
            arrays = {
                "video/offsets": np.asarray(offsets, dtype=np.int64),
                "video/duration": np.asarray(durations, dtype=np.float64),
                "video/labels": np.stack(labels),
                "segments/bounds": np.concatenate(seg_bounds).reshape(-1, 2),
                "segments/video": np.concatenate(seg_video),
                "segments/label": np.concatenate(seg_label),
                "ambiguous/bounds": np.concatenate(amb_bounds).reshape(-1, 2),
                "ambiguous/video": np.concatenate(amb_video),
            }
            for name, arr in arrays.items():
                f.create_dataset(name, data=arr)
                digest.update(name.encode() + np.ascontiguousarray(arr).tobytes())
            f.create_dataset("video/ids", data=np.asarray(ids, dtype=object), dtype=_STR)
            f.create_dataset("video/subset", data=np.asarray(subsets, dtype=object), dtype=_STR)
            digest.update("\n".join(ids + subsets + list(class_names)).encode())
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["classes"] = json.dumps(list(class_names))
            f.attrs["snippet_seconds"] = float(snippet_seconds)
            f.attrs["feature_name"] = feature_name
            f.attrs["feature_dim"] = int(feats.shape[1])
            f.attrs["source"] = json.dumps(source, default=str)
            f.attrs["checksum"] = "sha256:" + digest.hexdigest()
            f.attrs["labelled"] = bool(labelled)
            for k, val in (extra_attrs or {}).items():
                f.attrs[k] = json.dumps(val, default=str)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# left free on the disk while features are appended: HDF5 must be able to flush its caches and close
# the file cleanly (a write that fails inside HDF5 on a full disk leaves it unable to close, and the
# process crashes when it exits)
SPACE_MARGIN_BYTES = 16 * 2**20


def _ensure_space(tmp: Path, nbytes: int, path: Path, video_id: str) -> None:
    free = shutil.disk_usage(tmp.parent).free
    if free < nbytes + SPACE_MARGIN_BYTES:
        raise OSError(errno.ENOSPC, f"not enough space left for {path} at video {video_id}: {free / 2**20:.1f} MiB "
                                    f"free, {(nbytes + SPACE_MARGIN_BYTES) / 2**20:.1f} MiB needed to go on")


def is_labelled(path: str | os.PathLike) -> bool:
    """Whether the feature file at ``path`` holds annotations (its ``labelled`` attribute); True for a
    file that cannot be read, which :class:`FeatureFile` then reports."""
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("labelled", True))
    except OSError:
        return True


class FeatureFileError(ValueError):
    """A feature file that cannot be used; the message names the file (and video, field)."""


# the annotation arrays covered by the checksum, in the order they are hashed
_CHECKSUMMED = ("video/offsets", "video/duration", "video/labels", "segments/bounds", "segments/video",
                "segments/label", "ambiguous/bounds", "ambiguous/video")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class FeatureFile:
    """Read access to a feature file: metadata in memory, features read lazily per video.

    The h5py handle is opened on first use in each process (pid guard) and dropped when the
    object is pickled, so the object can be handed to DataLoader workers, ``fork`` or ``spawn``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"feature file not found: {self.path}")
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise FeatureFileError(f"feature file {self.path}: cannot be opened as HDF5 ({_first_line(err)}); "
                                   f"empty, truncated or not a feature file: prepare it again") from err
        with f:
            version = int(f.attrs.get("schema_version", -1))
            if version != SCHEMA_VERSION:
                raise FeatureFileError(f"feature file {self.path}: schema version {version}, expected {SCHEMA_VERSION}")
            try:
                self.class_names: list[str] = json.loads(f.attrs["classes"])
                self.snippet_seconds = float(f.attrs["snippet_seconds"])
                self.feature_name = str(f.attrs["feature_name"])
                self.feature_dim = int(f.attrs["feature_dim"])
                self.checksum = str(f.attrs["checksum"])
                self.source = json.loads(f.attrs["source"])
                self.labelled = bool(f.attrs.get("labelled", True))
                self.offsets = f["video/offsets"][()]
                self.video_ids = [s.decode() if isinstance(s, bytes) else s for s in f["video/ids"][()]]
                self.subsets = np.asarray([s.decode() if isinstance(s, bytes) else s for s in f["video/subset"][()]])
                self.durations = f["video/duration"][()]
                self.labels = f["video/labels"][()]
                self.segments = f["segments/bounds"][()]
                self.segment_video = f["segments/video"][()].astype(np.int64)
                self.segment_label = f["segments/label"][()].astype(np.int64)
                self.ambiguous = f["ambiguous/bounds"][()]
                self.ambiguous_video = f["ambiguous/video"][()].astype(np.int64)
                feature_shape = f["features"].shape
            except (KeyError, OSError, ValueError) as err:
                raise FeatureFileError(f"feature file {self.path}: missing or unreadable field "
                                       f"({_first_line(err)}); prepare it again") from err
        self.lengths = np.diff(self.offsets)
        self._check_layout(feature_shape)

    def _check_layout(self, feature_shape: tuple[int, ...]) -> None:
        """Cross-check the metadata against each other and the feature array."""
        n = len(self.video_ids)
        problems = []
        if len(self.offsets) != n + 1 or self.offsets[0] != 0 or np.any(self.lengths <= 0):
            problems.append("video/offsets is not an increasing list starting at 0 with one entry per video + 1")
        elif self.offsets[-1] != feature_shape[0]:
            problems.append(f"video/offsets ends at {self.offsets[-1]} but features has {feature_shape[0]} rows")
        if len(feature_shape) != 2 or feature_shape[1] != self.feature_dim:
            problems.append(f"features has shape {feature_shape}, attribute feature_dim is {self.feature_dim}")
        for name, arr in (("video/subset", self.subsets), ("video/duration", self.durations), ("video/labels", self.labels)):
            if len(arr) != n:
                problems.append(f"{name} has {len(arr)} entries for {n} videos")
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.class_names):
            problems.append(f"video/labels has shape {self.labels.shape} for {len(self.class_names)} classes")
        for name, idx in (("segments/video", self.segment_video), ("ambiguous/video", self.ambiguous_video)):
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                problems.append(f"{name} points outside the {n} videos")
        if not self.labelled and (self.class_names or len(self.segments) or len(self.ambiguous)):
            problems.append("marked unlabelled but holds classes, segments or ambiguous intervals")
        if len(self.segment_label) and (self.segment_label.min() < 0 or self.segment_label.max() >= len(self.class_names)):
            problems.append("segments/label points outside the class list")
        if problems:
            raise FeatureFileError(f"feature file {self.path}: {'; '.join(problems)}")

    def verify(self) -> str:
        """Recompute the SHA-256 stored at prepare time over features and annotations; raise
        :class:`FeatureFileError` when it differs (bytes changed since). Returns the checksum."""
        digest = hashlib.sha256()
        f = self._file()
        for v in range(len(self)):
            digest.update(np.ascontiguousarray(f["features"][self.offsets[v] : self.offsets[v + 1]]).tobytes())
        for name in _CHECKSUMMED:
            digest.update(name.encode() + np.ascontiguousarray(f[name][()]).tobytes())
        digest.update("\n".join(self.video_ids + list(self.subsets) + list(self.class_names)).encode())
        found = "sha256:" + digest.hexdigest()
        if found != self.checksum:
            raise FeatureFileError(f"feature file {self.path}: checksum {found} differs from the {self.checksum} "
                                   f"stored when it was prepared: its content changed; prepare it again")
        return found

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            handle = h5py.File(self.path, "r")
            try:
                self._check_checksum(str(handle.attrs.get("checksum", "")))
            except FeatureFileError:
                handle.close()
                raise
            self._handle = handle
            self._pid = os.getpid()
        return self._handle

    def check_unchanged(self) -> None:
        """Raise :class:`FeatureFileError` naming both checksums when the path now holds another
        file than the one this object indexed (a regenerated dataset, ``task=prepare ...
        overwrite=true`` during a training)."""
        try:
            with h5py.File(self.path, "r") as f:
                found = str(f.attrs.get("checksum", ""))
        except OSError as err:
            raise FeatureFileError(f"feature file {self.path}: cannot be opened any more ({_first_line(err)})") from err
        self._check_checksum(found)

    def _check_checksum(self, found: str) -> None:
        if found != self.checksum:  # never read another file's features through this index
            raise FeatureFileError(
                f"feature file {self.path}: replaced while in use: it now has checksum {found or 'none'}, but it "
                f"had {self.checksum} when it was opened (a regenerated dataset or a prepare with overwrite=true); "
                f"its features cannot be read through the old index: run again")

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def features(self, video: int) -> np.ndarray:
        """[T, D] features of one video as float32 (one contiguous read)."""
        lo, hi = self.offsets[video], self.offsets[video + 1]
        try:
            x = self._file()["features"][lo:hi].astype(np.float32, copy=False)
        except OSError as err:
            raise FeatureFileError(f"feature file {self.path}: video {self.video_ids[video]}: features cannot be "
                                   f"read ({_first_line(err)}); the file is damaged: prepare it again") from err
        if not np.isfinite(x).all():
            snippet, dim = np.argwhere(~np.isfinite(x))[0]
            raise FeatureFileError(f"feature file {self.path}: video {self.video_ids[video]}: non-finite value "
                                   f"{x[snippet, dim]} at snippet {snippet}, feature {dim}")
        return x

    def indices(self, subsets: str | list[str] | None) -> np.ndarray:
        """File indices of the videos whose subset is one of ``subsets`` (all when None), file order."""
        if subsets is None:
            return np.arange(len(self))
        names = [subsets] if isinstance(subsets, str) else list(subsets)
        return np.flatnonzero(np.isin(self.subsets, names))

    def ground_truth(self, subsets: str | list[str] | None = None) -> GroundTruth:
        """Annotations of the chosen subsets, videos re-indexed in file order."""
        full = GroundTruth(
            class_names=self.class_names,
            video_ids=self.video_ids,
            durations=self.durations,
            segments=self.segments,
            segment_video=self.segment_video,
            segment_label=self.segment_label,
            labels=self.labels,
            ambiguous=self.ambiguous,
            ambiguous_video=self.ambiguous_video,
        )
        return full.subset(self.indices(subsets))
