"""The "recordings" data setting: untrimmed sequences cut from real appliance recordings (PLAID).

Source: the 1,074 PLAID recordings of the UCR/UEA archive (11 appliance types, train/test split of
the archive), kept in the repository as ``data/recordings/source/plaid.npz`` (provenance, licence and
the extraction command in ``data/recordings/PROVENANCE.md``). Nothing is generated: every sample of
a sequence is a sample of a real recording.

A recording holds an optional *idle* stretch (the appliance still off) followed by the switch-on
and the steady state. The *onset* is the first sample whose magnitude exceeds
``ONSET_FRACTION`` x the recording's 95th percentile of ``|x|``; everything before it is idle.

* action classes (7 appliance types): an instance is the active part of one recording (from the
  onset), whole or cropped to a random number of snippets;
* background: idle stretches of any recording of the split, and whole or cropped recordings of the
  4 appliance types held out as background (fridge, heater, vacuum, washing machine).

Every piece is a whole number of ``window`` samples, so the pieces line up with the snippets: a
snippet is ``window`` consecutive samples (nominal ``snippet_seconds`` s; the archive does not state
the sample rate of its PLAID series, so seconds are a nominal time base) and ground-truth segments
are exact multiples of ``snippet_seconds``. Training sequences are cut from the archive's training
recordings only, test sequences from its test recordings only; a recording may serve in several
sequences of its own split.

Snippet features (``FEATURE_NAMES``): log magnitudes, spectral band energies and shares over the
window, shape statistics, deltas to the neighbouring snippets and a local context, then
standardised with the training sequences' mean and standard deviation (stored in
``features.json``).

Source loading, the onset and the features live in :mod:`issf.data.recording_signals`.

The output is a W-TALC folder (what :func:`issf.data.convert.convert_wtalc` reads; THUMOS subset
names: ``validation`` = train, ``test`` = test, no ``Ambiguous_test.txt``) plus ``pieces.json``
(where every piece of every sequence comes from), ``features.json`` and ``settings.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from issf.data.prepare import prepare_from_config
from issf.data.prepare.npy import load_npy
from issf.data.recording_signals import (
    FEATURE_NAMES,
    Piece,
    Source,
    default_source_path,
    load_source,
    onset,
    piece_signal,
    raw_features,
    sha256_file,
)

log = logging.getLogger(__name__)

__all__ = [
    "ACTION_CLASSES",
    "BACKGROUND_CLASSES",
    "BUILDER_VERSION",
    "FEATURE_NAMES",
    "NAME",
    "RecordingsConfig",
    "Source",
    "build_recordings",
    "dataset_statistics",
    "default_source_path",
    "ensure_recordings",
    "load_source",
    "onset",
    "piece_signal",
    "raw_features",
    "main",
]

BUILDER_VERSION = "2"
NAME = "recordings"  # feature file <NAME>-I3D-JOINTFeatures.npy
ACTION_CLASSES = ("air_conditioner", "compact_fluorescent_lamp", "fan", "hairdryer", "incandescent_light_bulb",
                  "laptop", "microwave")
BACKGROUND_CLASSES = ("fridge", "heater", "vacuum", "washing_machine")
SUBSET_NAMES = {"train": "validation", "test": "test"}  # W-TALC/THUMOS names: validation -> train
_WTALC_FILES = ("videoname", "subset", "duration", "classlist", "labels_all", "segments", "labels")



@dataclass(frozen=True)
class RecordingsConfig:
    """Builder settings (the ``recordings:`` block of ``conf/data/recordings.yaml``)."""

    seed: int = 1
    num_train: int = 200
    num_test: int = 120
    source: str | None = None  # npz path; None: the repository's data/recordings/source/plaid.npz
    window: int = 10  # samples per snippet
    snippet_seconds: float = 1.0  # nominal duration of one snippet
    min_instances: int = 1
    max_instances: int = 6
    second_class_fraction: float = 0.15  # sequences (>= 2 instances) holding a second action class
    min_instance_snippets: int = 3
    crop_fraction: float = 0.5  # instances / background recordings cropped to a random length
    min_gap_pieces: int = 1  # background pieces between two instances ...
    max_gap_pieces: int = 3
    max_edge_pieces: int = 2  # ... and before the first / after the last (0 allowed)
    idle_fraction: float = 0.5  # chance that a background piece is an idle stretch
    min_sequence_snippets: int = 40  # background pieces are added at a random end until this long

    def __post_init__(self) -> None:
        checks = {
            "num_train": self.num_train >= 1, "num_test": self.num_test >= 1, "window": self.window >= 2,
            "snippet_seconds": self.snippet_seconds > 0,
            "min_instances": 1 <= self.min_instances <= self.max_instances,
            "second_class_fraction": 0 <= self.second_class_fraction <= 1,
            "min_instance_snippets": self.min_instance_snippets >= 1, "crop_fraction": 0 <= self.crop_fraction <= 1,
            "min_gap_pieces": 0 <= self.min_gap_pieces <= self.max_gap_pieces,
            "max_edge_pieces": self.max_edge_pieces >= 0,
            "min_sequence_snippets": self.min_sequence_snippets >= 1, "idle_fraction": 0 <= self.idle_fraction <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"recordings: invalid value for {', '.join(bad)}: "
                             + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> RecordingsConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"recordings: unknown setting(s) {unknown}; accepted: {sorted(known)}")
        return cls(**dict(settings))

    def fingerprint(self) -> str:
        """Hash of the settings and the builder version (the source file's content included)."""
        d = asdict(self)
        d["source"] = sha256_file(Path(self.source) if self.source else default_source_path())
        d["builder_version"] = BUILDER_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]



class _Pools:
    """What one split offers: action recordings per class, idle stretches, background recordings."""

    def __init__(self, source: Source, split: str, cfg: RecordingsConfig):
        w = cfg.window
        self.split, self.cfg = split, cfg
        names = source.class_names
        self.actions: dict[str, list[tuple[int, int, int]]] = {c: [] for c in ACTION_CLASSES}  # (rec, onset, len)
        self.idle: list[tuple[int, int]] = []  # (rec, onset)
        self.background: list[tuple[int, int]] = []  # (rec, len)
        self.labels: list[str] = []
        for r in range(source.num_recordings(split)):
            x = source.recording(split, r)
            label = names[int(source.labels[split][r])]
            self.labels.append(label)
            o = onset(x)
            if o >= w:
                self.idle.append((r, o))
            if label in self.actions and len(x) - o >= cfg.min_instance_snippets * w:
                self.actions[label].append((r, o, len(x)))
            elif label in BACKGROUND_CLASSES and len(x) >= w:
                self.background.append((r, len(x)))
        empty = [c for c, v in self.actions.items() if not v]
        if empty or not self.idle or not self.background:
            raise ValueError(f"source split {split!r}: no usable recordings for {empty or 'idle/background'}")

    def _length(self, rng: np.random.Generator, full: int, minimum: int) -> int:
        if full > minimum and rng.random() < self.cfg.crop_fraction:
            return int(rng.integers(minimum, full + 1))
        return full

    def instance(self, rng: np.random.Generator, label: str, used: set[int]) -> Piece:
        cands = [c for c in self.actions[label] if c[0] not in used] or self.actions[label]
        r, o, n = cands[int(rng.integers(len(cands)))]
        w = self.cfg.window
        full = (n - o) // w
        k = self._length(rng, full, self.cfg.min_instance_snippets)
        # a crop keeps the switch-on half of the time, else starts at a random snippet of the active part
        shift = 0 if k == full or rng.random() < 0.5 else int(rng.integers(0, full - k + 1)) * w
        used.add(r)
        return Piece("action", label, self.split, r, o + shift, o + shift + k * w)

    def background_piece(self, rng: np.random.Generator) -> Piece:
        w = self.cfg.window
        if rng.random() < self.cfg.idle_fraction:
            r, o = self.idle[int(rng.integers(len(self.idle)))]
            k = int(rng.integers(1, o // w + 1))  # the last k idle snippets before the onset
            return Piece("idle", self.labels[r], self.split, r, o - k * w, o)
        r, n = self.background[int(rng.integers(len(self.background)))]
        full = n // w
        k = self._length(rng, full, 1)
        start = int(rng.integers(0, n - k * w + 1))
        return Piece("background", self.labels[r], self.split, r, start, start + k * w)

    def sequence(self, rng: np.random.Generator) -> list[Piece]:
        cfg = self.cfg
        n = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
        first = ACTION_CLASSES[int(rng.integers(len(ACTION_CLASSES)))]
        labels = [first] * n
        if n >= 2 and rng.random() < cfg.second_class_fraction:
            second = [c for c in ACTION_CLASSES if c != first][int(rng.integers(len(ACTION_CLASSES) - 1))]
            chosen = rng.permutation(n)[: int(rng.integers(1, n))]
            for i in chosen:
                labels[int(i)] = second
        used: set[int] = set()
        pieces: list[Piece] = []
        for i in range(n + 1):
            edge = i in (0, n)
            lo, hi = (0, cfg.max_edge_pieces) if edge else (cfg.min_gap_pieces, cfg.max_gap_pieces)
            pieces += [self.background_piece(rng) for _ in range(int(rng.integers(lo, hi + 1)))]
            if i < n:
                pieces.append(self.instance(rng, labels[i], used))
        while sum(p.stop - p.start for p in pieces) < cfg.min_sequence_snippets * cfg.window:
            extra = self.background_piece(rng)
            pieces = [extra, *pieces] if rng.random() < 0.5 else [*pieces, extra]
        return pieces



def _object_array(items: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, v in enumerate(items):
        out[i] = v
    return out


def _bytes_array(items: Sequence[str]) -> np.ndarray:
    return np.asarray([s.encode("utf-8") for s in items])


def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=array.dtype == object)


def _json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _place(out: Path, tmp: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder to ``out`` (replacing it only with ``overwrite``)."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; add --overwrite (overwrite=True in Python) to replace it")
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def build_recordings(
    out_folder: str | os.PathLike,
    *,
    seed: int = 1,
    num_train: int = 200,
    num_test: int = 120,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
    **settings: Any,
) -> Path:
    """Write the W-TALC folder ``out_folder`` (atomically: a temporary folder renamed when complete).

    ``settings`` are the other :class:`RecordingsConfig` fields. The same settings give
    byte-identical files. Returns the folder.
    """
    cfg = RecordingsConfig.from_dict({"seed": seed, "num_train": num_train, "num_test": num_test,
                                      "source": str(source) if source is not None else None, **settings})
    out = Path(out_folder)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; add --overwrite (overwrite=True in Python) to replace it")
    src = load_source(cfg.source)
    missing = [c for c in ACTION_CLASSES + BACKGROUND_CLASSES if c not in src.class_names]
    if missing:
        raise ValueError(f"{src.path}: field class_names lacks {missing}")
    w, ss = cfg.window, cfg.snippet_seconds

    # one independent stream per split: the test set does not change with num_train
    videos: list[dict[str, Any]] = []
    for split, count in (("train", cfg.num_train), ("test", cfg.num_test)):
        rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1])
        pools = _Pools(src, split, cfg)
        for i in range(count):
            pieces = pools.sequence(rng)
            signal = np.concatenate([piece_signal(src, p) for p in pieces])
            videos.append({"id": f"{NAME}_{split}_{i:04d}", "split": split, "pieces": pieces,
                           "features": raw_features(signal, w)})

    train = np.concatenate([v["features"] for v in videos if v["split"] == "train"])
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)

    names, subsets, durations, labels_all, segments, seg_labels, feats, pieces_out = [], [], [], [], [], [], [], {}
    for v in videos:
        x = ((v["features"] - mean) / std).astype(np.float32)
        t = 0
        segs, labs, rows = [], [], []
        for p in v["pieces"]:
            k = (p.stop - p.start) // w
            if p.kind == "action":
                segs.append([t * ss, (t + k) * ss])
                labs.append(p.label)
            rows.append({**asdict(p), "snippets": [t, t + k]})
            t += k
        assert t == len(x)
        names.append(v["id"])
        subsets.append(SUBSET_NAMES[v["split"]])
        durations.append([t * ss])
        labels_all.append([c for c in ACTION_CLASSES if c in labs])
        segments.append(segs)
        seg_labels.append(labs)
        feats.append(x)
        pieces_out[v["id"]] = rows

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _save(tmp / f"{NAME}-I3D-JOINTFeatures.npy", _object_array(feats))
        _save(tmp / "videoname.npy", _bytes_array(names))
        _save(tmp / "subset.npy", _bytes_array(subsets))
        _save(tmp / "duration.npy", np.asarray(durations, dtype=np.float64))
        _save(tmp / "classlist.npy", _bytes_array(list(ACTION_CLASSES)))
        _save(tmp / "labels_all.npy", _object_array(labels_all))
        _save(tmp / "segments.npy", _object_array(segments))
        _save(tmp / "labels.npy", _object_array(seg_labels))
        _json(tmp / "pieces.json", pieces_out)
        _json(tmp / "features.json", {"names": FEATURE_NAMES, "mean": mean.tolist(), "std": std.tolist(),
                                      "window": w, "snippet_seconds": ss})
        settings_out = asdict(cfg)
        settings_out["source"] = cfg.source  # as given (None: the repository's copy)
        _json(tmp / "settings.json", {"settings": settings_out, "fingerprint": cfg.fingerprint(),
                                      "builder_version": BUILDER_VERSION,
                                      "source_sha256": {"npz": sha256_file(src.path), **src.sha256}})
        _place(out, tmp, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out



def dataset_statistics(folder: str | os.PathLike) -> dict[str, Any]:
    """Summary of a built folder: classes, sequences per split, snippets, instances, background."""
    folder = Path(folder)
    def load(name: str) -> np.ndarray:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (not a recordings folder?)")
        return load_npy(path, field=name)

    feats = load(f"{NAME}-I3D-JOINTFeatures")
    subset = [s.decode() for s in load("subset")]
    segments = load("segments")
    info = json.loads((folder / "features.json").read_text(encoding="utf-8"))
    ss = float(info["snippet_seconds"])
    lengths = np.asarray([len(f) for f in feats])
    n_inst = np.asarray([len(s) for s in segments])
    inst_sec = np.asarray([e - s for seg in segments for s, e in seg])
    covered = sum((e - s) / ss for seg in segments for s, e in seg)

    def summary(a: np.ndarray) -> dict[str, float]:
        return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}

    return {
        "classes": [c.decode() for c in load("classlist")],
        "sequences": {s: subset.count(s) for s in sorted(set(subset))},
        "snippets_per_sequence": summary(lengths),
        "instances_per_sequence": summary(n_inst),
        "instance_seconds": summary(inst_sec),
        "instances": int(n_inst.sum()),
        "background_fraction": float(1 - covered / lengths.sum()),
        "feature_dim": int(feats[0].shape[1]),
        "snippet_seconds": ss,
        "multi_class_sequences": int(sum(len(set(map(str, lab))) > 1 for lab in load("labels"))),
    }



def _h5_current(h5_path: Path, folder: Path) -> bool:
    """Whether the feature file was converted from ``folder``'s present files."""
    from issf.data.h5 import FeatureFile

    try:
        ff = FeatureFile(h5_path)
        files = ff.source["files"]
        for k in _WTALC_FILES:
            if files[k]["sha256"] != sha256_file(folder / f"{k}.npy"):
                return False
        feat = folder / f"{NAME}-I3D-JOINTFeatures.npy"
        st = feat.stat()
        return files["features"]["size"] == st.st_size and files["features"]["mtime"] == st.st_mtime
    except Exception:  # unreadable, other layout, other source: convert again
        return False


def ensure_recordings(settings: Mapping[str, Any], h5_path: str | os.PathLike,
                      prepare: Mapping[str, Any] | None = None) -> None:
    """Build the W-TALC folder ``<h5 dir>/<h5 stem>_wtalc`` if missing or built with other settings,
    then convert it into ``h5_path`` with the project's W-TALC converter (through
    ``prepare_from_config``, as ``task=prepare`` does) if the file is missing or stale. ``prepare``:
    the config's ``prepare:`` block (its ``folder`` and ``overwrite`` are replaced)."""
    h5_path = Path(h5_path)
    cfg = RecordingsConfig.from_dict(settings)
    folder = h5_path.with_name(f"{h5_path.stem}_wtalc")
    stamp = folder / "settings.json"
    try:
        built = json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        built = None
    rebuilt = built != cfg.fingerprint()
    if rebuilt:
        log.info(f"building {folder} ({cfg.num_train} training / {cfg.num_test} test sequences from real recordings)")
        build_recordings(folder, overwrite=True, **asdict(cfg))
    if rebuilt or not _h5_current(h5_path, folder):
        options = {k: v for k, v in (prepare or {}).items() if v is not None and k not in ("folder", "overwrite")}
        if options.setdefault("format", "wtalc") != "wtalc":
            raise ValueError(f"prepare.format must be 'wtalc' for the recordings setting, got {options['format']!r}")
        options.setdefault("name", NAME)
        options.setdefault("snippet_seconds", cfg.snippet_seconds)
        if float(options["snippet_seconds"]) != cfg.snippet_seconds:
            raise ValueError(f"prepare.snippet_seconds={options['snippet_seconds']} differs from "
                             f"recordings.snippet_seconds={cfg.snippet_seconds}")
        # the same call as `python run.py task=prepare data=recordings` (convert_wtalc underneath)
        report = prepare_from_config({**options, "folder": str(folder), "overwrite": True}, h5_path)
        log.info(str(report))



def main(argv: list[str] | None = None) -> int:
    """``python -m issf.data.recordings --out FOLDER [--seed N]``: build and print the statistics."""
    parser = argparse.ArgumentParser(prog="python -m issf.data.recordings",
                                     description="Build the W-TALC folder of the real-recording data setting.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (W-TALC layout)")
    parser.add_argument("--seed", type=int, default=RecordingsConfig.seed)
    parser.add_argument("--num-train", type=int, default=RecordingsConfig.num_train)
    parser.add_argument("--num-test", type=int, default=RecordingsConfig.num_test)
    parser.add_argument("--source", type=Path, default=None, help="source npz (default: the repository's copy)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    out = build_recordings(args.out, seed=args.seed, num_train=args.num_train, num_test=args.num_test,
                           source=args.source, overwrite=args.overwrite)
    print(f"wrote {out}")
    print(json.dumps(dataset_statistics(out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
