"""Signals of the "recordings" data setting: the compact PLAID source copy, the switch-on onset
and the snippet features (see :mod:`issf.data.recordings`). numpy and the standard library only.

May import: nothing from ``issf``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_FILE = "plaid.npz"
ONSET_FRACTION = 0.15
_EPS = 1e-3



@dataclass
class Source:
    """The source recordings of one file: per split, concatenated values, offsets and labels."""

    path: Path
    class_names: list[str]
    values: dict[str, np.ndarray]  # split -> float32 [N]
    offsets: dict[str, np.ndarray]  # split -> int64 [R + 1]
    labels: dict[str, np.ndarray]  # split -> int [R], index into class_names
    sha256: dict[str, str] = field(default_factory=dict)  # split -> sha256 of the archive's .ts file

    def recording(self, split: str, index: int) -> np.ndarray:
        """Samples of recording ``index`` of ``split`` (float64)."""
        o = self.offsets[split]
        return self.values[split][o[index]:o[index + 1]].astype(np.float64)

    def num_recordings(self, split: str) -> int:
        return len(self.labels[split])


def default_source_path() -> Path:
    """``data/recordings/source/plaid.npz`` of the repository (searched above this module, then the cwd)."""
    rel = Path("data") / "recordings" / "source" / SOURCE_FILE
    here = Path(__file__).resolve()
    candidates = [p / rel for p in here.parents] + [Path.cwd() / rel]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{rel}: the compact source copy was not found above {here.parent} nor in {Path.cwd()}; "
                            f"re-create it with data/recordings/extract_source.py (see data/recordings/PROVENANCE.md)")


def load_source(path: str | os.PathLike | None = None) -> Source:
    """Read the compact source copy; errors name the file and the field."""
    p = Path(path) if path is not None else default_source_path()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: source file not found")
    try:
        npz = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: not a readable npz file ({exc})") from None
    with npz:
        def get(key: str) -> np.ndarray:
            if key not in npz.files:
                raise ValueError(f"{p}: field {key!r} missing (has {sorted(npz.files)})")
            return npz[key]

        names = [str(c) for c in get("class_names")]
        values, offsets, labels, sha = {}, {}, {}, {}
        for split in ("train", "test"):
            v = get(f"{split}_values")
            o = get(f"{split}_offsets").astype(np.int64)
            lab = get(f"{split}_labels").astype(np.int64)
            if v.ndim != 1 or not np.all(np.isfinite(v)):
                raise ValueError(f"{p}: field {split}_values must be a finite 1-D array")
            if o.ndim != 1 or len(o) != len(lab) + 1 or o[0] != 0 or o[-1] != len(v) or np.any(np.diff(o) <= 0):
                raise ValueError(f"{p}: field {split}_offsets must rise from 0 to {len(v)} with one entry per "
                                 f"recording plus one ({len(lab)} labels)")
            if len(lab) and (lab.min() < 0 or lab.max() >= len(names)):
                raise ValueError(f"{p}: field {split}_labels has labels outside 0..{len(names) - 1}")
            values[split], offsets[split], labels[split] = v, o, lab
            sha[split] = str(npz[f"{split}_sha256"]) if f"{split}_sha256" in npz.files else ""
    return Source(p, names, values, offsets, labels, sha)


def onset(x: np.ndarray, fraction: float = ONSET_FRACTION) -> int:
    """Index of the first sample with ``|x| > fraction * percentile95(|x|)`` (samples before it are idle)."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    threshold = fraction * np.percentile(a, 95)
    above = np.flatnonzero(a > threshold)
    return int(above[0]) if len(above) else len(a)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_BASE = ["log_mean_abs", "log_rms", "log_std", "log_max_abs", "log_range", "mean_over_mean_abs", "crest",
         "log_mean_abs_diff"]
_BANDS = 6  # rfft bins of a 10-sample window; fewer/more for other windows are pooled into 6 bands
FEATURE_NAMES: list[str] = (
    _BASE
    + [f"log_band{k}" for k in range(_BANDS)]
    + [f"share_band{k}" for k in range(_BANDS)]
    + [f"delta_prev_{n}" for n in _BASE[:5]]
    + [f"delta_next_{n}" for n in _BASE[:5]]
    + ["context_log_rms_5", "context_log_rms_15", "log_rms_minus_context_15", "log_rms_minus_sequence_min",
       "log_rms_minus_sequence_median", "context_std_log_rms_5"]
    # waveform shape over the 3-snippet window centred on the snippet (scale-free)
    + [f"wide3_autocorr_lag{k}" for k in range(1, 6)]
    + [f"wide3_quantile_{q}" for q in (10, 25, 50, 75, 90)]
    + [f"wide3_share_band{k}" for k in range(_BANDS)]
    + ["wide3_log_rms"]
)


def _log(v: np.ndarray) -> np.ndarray:
    return np.log10(v + _EPS)


def _moving(x: np.ndarray, width: int, fn: str = "mean") -> np.ndarray:
    """Centred moving mean / std over ``width`` snippets (edge-padded)."""
    half = width // 2
    pad = np.pad(x, (half, width - 1 - half), mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, width)
    return win.mean(axis=1) if fn == "mean" else win.std(axis=1)


def raw_features(signal: np.ndarray, window: int) -> np.ndarray:
    """Unstandardised snippet features ``[len(signal) // window, len(FEATURE_NAMES)]`` (float64)."""
    x = np.asarray(signal, dtype=np.float64)
    t = len(x) // window
    if t < 1:
        raise ValueError(f"signal of {len(x)} samples is shorter than one window ({window})")
    w = x[: t * window].reshape(t, window)
    a = np.abs(w)
    mean_abs = a.mean(axis=1)
    rms = np.sqrt((w**2).mean(axis=1))
    std = w.std(axis=1)
    max_abs = a.max(axis=1)
    rng = w.max(axis=1) - w.min(axis=1)
    sign = w.mean(axis=1) / (mean_abs + _EPS)
    crest = max_abs / (rms + _EPS)
    rough = np.abs(np.diff(w, axis=1)).mean(axis=1)
    power = np.abs(np.fft.rfft(w, axis=1)) ** 2 / window
    bands = np.stack([p.sum(axis=1) for p in np.array_split(power, _BANDS, axis=1)], axis=1) \
        if power.shape[1] >= _BANDS else np.pad(power, ((0, 0), (0, _BANDS - power.shape[1])))
    base = np.stack([_log(mean_abs), _log(rms), _log(std), _log(max_abs), _log(rng), sign, crest, _log(rough)],
                    axis=1)
    lead = base[:, :5]
    prev = np.vstack([lead[:1], lead[:-1]])
    nxt = np.vstack([lead[1:], lead[-1:]])
    log_rms = base[:, 1]
    ctx5, ctx15 = _moving(log_rms, 5), _moving(log_rms, 15)
    context = np.stack([ctx5, ctx15, log_rms - ctx15, log_rms - log_rms.min(), log_rms - np.median(log_rms),
                        _moving(log_rms, 5, "std")], axis=1)
    # the 3-snippet window centred on each snippet (edge snippets repeated)
    padded = np.vstack([w[:1], w, w[-1:]])
    wide = np.concatenate([padded[:-2], padded[1:-1], padded[2:]], axis=1)
    centred = wide - wide.mean(axis=1, keepdims=True)
    energy = (centred**2).sum(axis=1) + _EPS**2
    autocorr = np.stack([(centred[:, :-k] * centred[:, k:]).sum(axis=1) / energy for k in range(1, 6)], axis=1)
    scaled = centred / np.sqrt(energy / wide.shape[1])[:, None]
    quantiles = np.quantile(scaled, [0.1, 0.25, 0.5, 0.75, 0.9], axis=1).T
    wpower = np.abs(np.fft.rfft(wide, axis=1)) ** 2 / wide.shape[1]
    wbands = np.stack([p.sum(axis=1) for p in np.array_split(wpower, _BANDS, axis=1)], axis=1)
    wshares = wbands / (wbands.sum(axis=1, keepdims=True) + _EPS**2)
    wide_rms = _log(np.sqrt((wide**2).mean(axis=1)))[:, None]
    out = np.concatenate([base, _log(bands), bands / (bands.sum(axis=1, keepdims=True) + _EPS**2),
                          lead - prev, nxt - lead, context, autocorr, quantiles, wshares, wide_rms], axis=1)
    assert out.shape[1] == len(FEATURE_NAMES)
    return out


@dataclass(frozen=True)
class Piece:
    """``window``-aligned samples ``[start, stop)`` of one source recording, placed in a sequence."""

    kind: str  # "action" | "idle" | "background"
    label: str  # the recording's appliance type
    split: str  # source split
    recording: int  # index within the split
    start: int  # sample range in the recording
    stop: int


def piece_signal(source: Source, piece: Mapping[str, Any] | Piece) -> np.ndarray:
    """The samples of one piece (float64)."""
    p = piece if isinstance(piece, Piece) else Piece(**piece)
    x = source.recording(p.split, p.recording)
    if not (0 <= p.start < p.stop <= len(x)):
        raise ValueError(f"piece [{p.start}, {p.stop}) outside recording {p.split}[{p.recording}] ({len(x)} samples)")
    return x[p.start:p.stop]
