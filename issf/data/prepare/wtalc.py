"""W-TALC folders -> the HDF5 feature file.

A W-TALC folder holds ``<name>-I3D-JOINTFeatures.npy`` plus ``videoname.npy``, ``subset.npy``,
``duration.npy``, ``classlist.npy``, ``labels_all.npy``, ``segments.npy``, ``labels.npy`` and
optionally ``Ambiguous_test.txt``, as read by the W-TALC/RSKP/ISSF code. Both the THUMOS'14
variant (byte strings) and the ActivityNet 1.3 variant (str) are read.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from issf.data.prepare.core import (
    Part,
    Video,
    WriterOptions,
    append_warning,
    check_output,
    check_unique,
    class_indices,
    describe,
    multi_hot,
    names,
    read_ambiguous,
    read_durations,
    sized,
    stat,
    stream_to_file,
    text,
)
from issf.data.prepare.npy import load_npy
from issf.data.prepare.validate import (
    ConversionReport,
    PrepareError,
    PrepareWarning,
    empty_interval_warning,
    parse_intervals,
)

WTALC_FILES = ("videoname", "subset", "duration", "classlist", "labels_all", "segments", "labels")
THUMOS_SUBSETS = {"validation": "train", "test": "test"}
ACTIVITYNET_SUBSETS = {"training": "train", "validation": "test"}


def features_path(folder: Path, name: str | None, feature_file: str | os.PathLike | None) -> tuple[str, Path]:
    """The dataset name (default: the folder name without ``-Annotations``) and the features file
    (default: ``<folder>/<name>-I3D-JOINTFeatures.npy``) of a W-TALC folder."""
    name = name or folder.name.removesuffix("-Annotations")
    return name, Path(feature_file) if feature_file else folder / f"{name}-I3D-JOINTFeatures.npy"


def video_loader(feats: np.ndarray, path: Path) -> Callable[[Video], list[Part]]:
    """Loads video ``v.key`` of a W-TALC features array for the writer, releasing each object-array
    entry once it is handed over (the whole file is in memory)."""
    def load(v: Video) -> list[Part]:
        try:
            x = np.asarray(feats[v.key])
        except (TypeError, ValueError) as exc:  # e.g. ragged nested lists
            raise PrepareError(f"not a numeric array ({exc})", file=path, video=v.video_id,
                               field=f"features[{v.key}]") from None
        if feats.dtype == object:
            feats[v.key] = None
        return [(x, path, f"features[{v.key}]")]

    return load


def _default_subset_map(subsets: set[str], file: Path) -> dict[str, str]:
    if subsets <= set(THUMOS_SUBSETS):
        return dict(THUMOS_SUBSETS)
    if subsets <= {"training", "validation", "testing"}:
        return dict(ACTIVITYNET_SUBSETS)
    raise PrepareError(f"cannot infer subset_map for subsets {sorted(subsets)}; set data.prepare.subset_map=",
                       file=file, field="subset")


def convert_wtalc(
    folder: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    name: str | None = None,
    feature_file: str | os.PathLike | None = None,
    ambiguous_file: str | os.PathLike | None = None,
    subset_map: Mapping[str, str] | None = None,
    labels_from: str = "video",
    writer: WriterOptions | None = None,
) -> ConversionReport:
    """Convert a W-TALC folder into a feature file at ``out_path``.

    ``name`` defaults to the folder name without a trailing ``-Annotations``; ``feature_file``
    to ``<folder>/<name>-I3D-JOINTFeatures.npy`` and ``ambiguous_file`` to
    ``<folder>/Ambiguous_test.txt`` when present. ``subset_map`` maps the file's subsets to the
    output's (default: THUMOS ``validation->train, test->test`` or ActivityNet
    ``training->train, validation->test``, chosen by the subset names); unmapped videos are
    skipped and counted. The feature file is one pickled object array, so it is loaded whole.
    Object arrays are unpickled by :func:`issf.data.prepare.npy.load_npy`, which never runs code from them.
    """
    writer = writer or WriterOptions()
    if labels_from not in ("video", "segments"):
        raise ValueError(f"data.prepare.labels_from: must be video or segments, got {labels_from!r}")
    folder, out_path = Path(folder), Path(out_path)
    name, feature_path = features_path(folder, name, feature_file)
    paths = {k: folder / f"{k}.npy" for k in WTALC_FILES}
    paths["features"] = feature_path
    for role, p in paths.items():
        stat(p, field=role, hint=" (set data.prepare.feature_file=<file>)" if role == "features" else "")
    if ambiguous_file is not None:
        amb_path: Path | None = Path(ambiguous_file)
        stat(amb_path, field="ambiguous")
    else:
        amb_path = folder / "Ambiguous_test.txt" if (folder / "Ambiguous_test.txt").is_file() else None
    check_output(out_path, writer.overwrite)

    ann = {k: sized(load_npy(paths[k], field=k), file=paths[k], field=k) for k in WTALC_FILES}
    ids = [text(v, file=paths["videoname"], field=f"videoname[{i}]") for i, v in enumerate(ann["videoname"])]
    n = len(ids)
    for k in ("subset", "duration", "labels_all", "segments", "labels"):
        if len(ann[k]) != n:
            raise PrepareError(f"{len(ann[k])} entries, but videoname.npy has {n}", file=paths[k], field=k)
    check_unique(ids, file=paths["videoname"], field="videoname")
    classes = [text(c, file=paths["classlist"], field=f"classlist[{i}]") for i, c in enumerate(ann["classlist"])]
    check_unique(classes, file=paths["classlist"], field="classlist")
    class_index = {c: i for i, c in enumerate(classes)}
    subsets = [text(s, file=paths["subset"], video=vid, field="subset") for s, vid in zip(ann["subset"], ids)]
    mapping = dict(subset_map) if subset_map is not None else _default_subset_map(set(subsets), paths["subset"])
    durations = read_durations(ann["duration"], ids, paths["duration"])

    warnings: list[PrepareWarning] = []
    skipped: Counter[str] = Counter()
    videos: list[Video] = []
    for i, vid in enumerate(ids):
        if subsets[i] not in mapping:
            skipped[subsets[i]] += 1
            continue
        if not (np.isfinite(durations[i]) and durations[i] > 0):
            raise PrepareError(f"duration must be a positive number, got {durations[i]}",
                               file=paths["duration"], video=vid, field="duration")
        segs = parse_intervals(ann["segments"][i], file=paths["segments"], video=vid, fld="segments")
        append_warning(warnings, empty_interval_warning(segs, file=paths["segments"], video=vid, fld="segments"))
        seg_names = names(ann["labels"][i], file=paths["labels"], video=vid, field="labels")
        if len(seg_names) != len(segs):
            raise PrepareError(f"{len(seg_names)} segment labels for {len(segs)} segments in segments.npy",
                               file=paths["labels"], video=vid, field="labels")
        seg_idx = class_indices(seg_names, class_index, file=paths["labels"], video=vid, field="labels")
        video_names = names(ann["labels_all"][i], file=paths["labels_all"], video=vid, field="labels_all")
        video_idx = class_indices(video_names, class_index, file=paths["labels_all"], video=vid, field="labels_all")
        if set(video_idx.tolist()) != set(seg_idx.tolist()):
            kept = "labels_all" if labels_from == "video" else "segment labels"
            warnings.append(PrepareWarning(
                "labels_disagree", str(paths["labels_all"]), vid, "labels_all",
                f"labels_all={sorted(set(video_names))} but segment labels={sorted(set(seg_names))}; "
                f"kept {kept}"))
        labels = multi_hot(video_idx if labels_from == "video" else seg_idx, len(classes))
        videos.append(Video(vid, mapping[subsets[i]], float(durations[i]), segs, seg_idx, labels, key=i))
    ambiguous = read_ambiguous(amb_path) if amb_path is not None else {}

    feats = sized(load_npy(paths["features"], field="features"), file=paths["features"], field="features")
    if len(feats) != n:
        raise PrepareError(f"{len(feats)} feature arrays, but videoname.npy has {n} videos",
                           file=paths["features"], field="features")
    notes = [f"W-TALC features are one pickled object array: loaded whole "
             f"({paths['features'].stat().st_size / 2**20:.0f} MiB on disk) before streaming"]

    load = video_loader(feats, paths["features"])
    files = {k: describe(p, digest=k != "features") for k, p in paths.items()}
    if amb_path is not None:
        files["ambiguous"] = describe(amb_path, digest=True)
    return stream_to_file(
        videos, load, out_path=out_path, classes=classes, source={"format": "wtalc", "files": files},
        ambiguous=ambiguous, ambiguous_file=amb_path, annotation_file=paths["segments"], writer=writer,
        feature_name=f"{name}-I3D-JOINT", warnings=warnings, notes=notes, skipped=dict(skipped),
        record={"subset_map": mapping, "labels_from": labels_from},
    )
