"""Built-in synthetic THUMOS'14-like dataset: annotations and I3D-like snippet features.

Layout (per video): lognormal video length, a lognormal instance count correlated with the
length, lognormal instance lengths, non-overlapping placement with capped coverage, 1 or 2
classes per video, and short ambiguous intervals (recorded for the test split, as THUMOS'14
does). The layout can instead be read from a W-TALC annotation folder (``from_annotations``).

Features: every snippet is a latent vector decoded by a fixed random layer with a softplus, so
values are non-negative and right-skewed like averaged post-ReLU I3D activations. The latent
holds a per-video scene that changes abruptly at shot changes in the background, a
class-correlated scene, a slow Ornstein-Uhlenbeck drift, temporally smooth noise, and, inside
actions, a class prototype plus a generic motion vector present in every action, with linear
ramps at the boundaries. Just outside actions the class prototype appears without the motion
("context"); short motion-only distractors appear in the background. Confusable class pairs
have prototypes that share most of their components.

Randomness: one stream for the shared "world" (prototypes, decoder) and, per video, one stream
for its layout and one for its features, each keyed by (seed, split, video index). Generating
N videos therefore reproduces the first k of them exactly, and changing a feature knob keeps
every annotation.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import h5py
import numpy as np

from issf.data.h5 import VideoEntry, write_feature_file
from issf.data.prepare.npy import load_npy

THUMOS14_CLASSES = [
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing",
    "HammerThrow", "HighJump", "JavelinThrow", "LongJump", "PoleVault",
    "Shotput", "SoccerPenalty", "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
]
SPLITS = ("train", "test")
_SPLIT_KEY = {"train": 1, "test": 2}
_WORLD_KEY = 0
_FEATURE_NAME = "synthetic-i3d-like"
GENERATOR_VERSION = 1  # bump when the same config would produce different data


@dataclass
class SyntheticConfig:
    """Every knob of the generator (described in ``conf/data/synthetic.yaml``).

    Times are in seconds and rates per second. Latent std knobs are per latent dimension;
    prototypes and the motion vector have unit norm, and ``*_strength`` knobs scale them.
    """

    seed: int = 0
    num_train: int = 160
    num_test: int = 80
    num_classes: int = 20
    class_names: list[str] | None = None  # None: THUMOS'14 names for 20 classes, else class_00...
    feature_dim: int = 2048
    latent_dim: int = 64
    dtype: str = "float16"
    snippet_seconds: float = 0.64
    # layout
    video_seconds_median: float = 155.0
    video_seconds_sigma: float = 0.8
    min_video_seconds: float = 10.0
    max_video_seconds: float = 600.0
    instances_median: float = 8.5
    instances_sigma: float = 1.2
    count_length_corr: float = 0.6
    instance_seconds_median: float = 2.9
    instance_seconds_sigma: float = 0.83
    min_instance_seconds: float = 0.2
    max_coverage: float = 0.8
    gap_alpha: float = 0.7
    two_class_fraction: float = 0.13
    pair_cooccurrence: float = 0.5
    ambiguous_video_fraction: float = 0.17
    ambiguous_max_per_video: int = 5
    ambiguous_seconds_median: float = 2.5
    ambiguous_seconds_sigma: float = 0.8
    ambiguous_edge_fraction: float = 0.5
    # features
    prototype_density: float = 0.3
    confusable_pairs: list[list[int]] = field(default_factory=lambda: [[4, 7], [5, 6], [15, 18], [11, 13]])
    confusion_share: float = 0.7
    action_strength: float = 1.0
    instance_std: float = 0.05
    amplitude_sigma: float = 0.3
    motion_strength: float = 1.0
    context_strength: float = 0.5
    context_seconds: float = 4.0
    class_scene_strength: float = 0.2
    boundary_ramp_snippets: float = 2.0
    ambiguous_strength: float = 0.5
    distractor_rate: float = 0.02
    distractor_seconds_median: float = 2.0
    distractor_strength: float = 0.6
    scene_std: float = 0.2
    shot_change_rate: float = 0.05
    shot_std: float = 0.2
    noise_std: float = 0.15
    noise_smoothing: float = 0.5
    drift_std: float = 0.1
    drift_seconds: float = 60.0
    channel_noise_std: float = 0.1
    decoder_gain: float = 2.0
    decoder_bias: float = -1.2
    # real layouts
    from_annotations: str | None = None
    max_videos: int | None = None  # per split, in folder order; None: all

    def __post_init__(self) -> None:
        self.confusable_pairs = [[int(a), int(b)] for a, b in self.confusable_pairs]
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"{len(self.class_names)} class_names for num_classes={self.num_classes}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype}")
        if self.num_classes < 2 or self.feature_dim < 1 or self.latent_dim < 2:
            raise ValueError("need num_classes >= 2, feature_dim >= 1, latent_dim >= 2")
        if not 0 < self.max_coverage <= 1 or not 0 <= self.confusion_share <= 1:
            raise ValueError("max_coverage must be in (0, 1] and confusion_share in [0, 1]")
        if not self.min_video_seconds <= self.max_video_seconds:
            raise ValueError("min_video_seconds must not exceed max_video_seconds")

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON types (what the feature file stores)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class World:
    """What all videos share: class names, latent prototypes, motion vector and decoder."""

    class_names: list[str]
    prototypes: np.ndarray  # [C, L] unit norm, non-negative
    motion: np.ndarray  # [L] unit norm, non-negative
    decoder: np.ndarray  # [L, D]
    bias: np.ndarray  # [D]


@dataclass
class Layout:
    """Annotations of one video (seconds)."""

    video_id: str
    subset: str
    index: int  # position within its split
    duration: float
    segments: np.ndarray  # [S, 2]
    segment_labels: np.ndarray  # [S]
    ambiguous: np.ndarray  # [A, 2] intervals with a partial action signal
    ambiguous_annotated: bool  # whether ``ambiguous`` goes into the file


def num_snippets(duration: float, snippet_seconds: float = 0.64) -> int:
    """Snippets of a video: floor(duration / snippet_seconds), at least 1."""
    return max(1, int(math.floor(duration / snippet_seconds + 1e-6)))


def default_class_names(num_classes: int) -> list[str]:
    """THUMOS'14 class names for 20 classes, otherwise ``class_00``, ``class_01``, ..."""
    if num_classes == len(THUMOS14_CLASSES):
        return list(THUMOS14_CLASSES)
    return [f"class_{i:02d}" for i in range(num_classes)]


def _rng(cfg: SyntheticConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key))


def _sparse_unit(rng: np.random.Generator, n: int, dim: int, density: float) -> np.ndarray:
    """[n, dim] non-negative sparse rows of unit norm (at least one active component)."""
    mask = rng.random((n, dim)) < density
    mask[np.arange(n), rng.integers(dim, size=n)] = True
    x = rng.exponential(1.0, (n, dim)) * mask
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_world(cfg: SyntheticConfig, class_names: list[str] | None = None) -> World:
    """The shared world of a config (deterministic for its seed)."""
    names = class_names or cfg.class_names or default_class_names(cfg.num_classes)
    rng = _rng(cfg, _WORLD_KEY)
    c, dim = len(names), cfg.latent_dim
    protos = _sparse_unit(rng, c, dim, cfg.prototype_density)
    for a, b in cfg.confusable_pairs:
        if not (0 <= a < c and 0 <= b < c and a != b):
            raise ValueError(f"confusable pair {[a, b]} is not a pair of distinct classes out of {c}")
        mixed = cfg.confusion_share * protos[a] + (1.0 - cfg.confusion_share) * protos[b]
        protos[b] = mixed / np.linalg.norm(mixed)
    motion = _sparse_unit(rng, 1, dim, cfg.prototype_density)[0]
    decoder = rng.standard_normal((dim, cfg.feature_dim)) * (cfg.decoder_gain / math.sqrt(dim))
    bias = cfg.decoder_bias + 0.3 * rng.standard_normal(cfg.feature_dim)
    return World(names, protos, motion, decoder.astype(np.float32), bias.astype(np.float32))



def _lognormal(rng: np.random.Generator, median: float, sigma: float, size: Any = None) -> Any:
    return median * np.exp(sigma * rng.standard_normal(size))


def _truncated_normal(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A standard normal draw conditioned on [lo, hi] (inverse CDF, one uniform)."""
    nd = NormalDist()
    p_lo, p_hi = nd.cdf(lo), nd.cdf(hi)
    p = p_lo + (p_hi - p_lo) * rng.random()
    return nd.inv_cdf(min(max(p, 1e-12), 1 - 1e-12))


def _video_classes(cfg: SyntheticConfig, rng: np.random.Generator, index: int, n: int) -> np.ndarray:
    """Class of each of ``n`` instances: class ``index % C``, sometimes with a second class."""
    c = cfg.num_classes
    first = index % c
    if n < 2 or rng.random() >= cfg.two_class_fraction:
        return np.full(n, first)
    partners = [b if a == first else a for a, b in cfg.confusable_pairs if first in (a, b)]
    if partners and rng.random() < cfg.pair_cooccurrence:
        second = partners[rng.integers(len(partners))]
    else:
        second = (first + 1 + rng.integers(c - 1)) % c
    labels = np.where(rng.random(n) < 0.5, first, second)
    labels[0], labels[1 + rng.integers(n - 1)] = first, second
    return labels


def _ambiguous_intervals(
    cfg: SyntheticConfig, rng: np.random.Generator, duration: float, segments: np.ndarray
) -> np.ndarray:
    """1..max short intervals in some videos, at action edges or in the background."""
    if rng.random() >= cfg.ambiguous_video_fraction:
        return np.zeros((0, 2))
    k = int(min(rng.geometric(0.5), cfg.ambiguous_max_per_video))
    out = []
    for _ in range(k):
        length = min(float(_lognormal(rng, cfg.ambiguous_seconds_median, cfg.ambiguous_seconds_sigma)), duration)
        if len(segments) and rng.random() < cfg.ambiguous_edge_fraction:
            edge = segments[rng.integers(len(segments)), rng.integers(2)]
            start = edge - length * rng.random()
        else:
            for _ in range(10):  # prefer background
                start = rng.random() * (duration - length)
                if not np.any((segments[:, 0] < start + length) & (segments[:, 1] > start)):
                    break
        start = float(np.clip(start, 0.0, duration - length))
        out.append((start, start + length))
    return np.asarray(sorted(out)).reshape(-1, 2)


def _synthetic_layout(cfg: SyntheticConfig, subset: str, index: int) -> Layout:
    rng = _rng(cfg, _SPLIT_KEY[subset], index, 0)
    mu, sig = math.log(cfg.video_seconds_median), cfg.video_seconds_sigma
    z_len = _truncated_normal(
        rng, (math.log(cfg.min_video_seconds) - mu) / sig, (math.log(cfg.max_video_seconds) - mu) / sig
    )
    duration = float(np.exp(mu + sig * z_len))
    rho = cfg.count_length_corr
    z_n = rho * z_len + math.sqrt(1.0 - rho * rho) * rng.standard_normal()
    n = max(1, int(round(cfg.instances_median * math.exp(cfg.instances_sigma * z_n))))
    lengths = np.maximum(
        _lognormal(rng, cfg.instance_seconds_median, cfg.instance_seconds_sigma, n), cfg.min_instance_seconds
    )
    budget = cfg.max_coverage * duration
    n = max(1, int(np.searchsorted(np.cumsum(lengths), budget, side="right")))
    lengths = np.minimum(lengths[:n], budget)
    gaps = rng.dirichlet(np.full(n + 1, cfg.gap_alpha)) * (duration - lengths.sum())
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths[:-1])])
    segments = np.stack([starts, starts + lengths], axis=1)
    labels = _video_classes(cfg, rng, index, n)
    ambiguous = _ambiguous_intervals(cfg, rng, duration, segments)
    return Layout(f"synthetic_{subset}_{index:05d}", subset, index, duration, segments, labels, ambiguous,
                  subset == "test")


def _annotation_layouts(cfg: SyntheticConfig) -> tuple[list[str], list[Layout]]:
    """Layouts read from a W-TALC annotation folder (validation -> train, test -> test).

    Segments are clipped to [0, duration] and dropped when empty after clipping."""
    root = Path(cfg.from_annotations)

    def load(name: str) -> np.ndarray:
        return load_npy(root / f"{name}.npy", field=name)  # W-TALC object arrays, unpickled safely

    def text(s: Any) -> str:
        return s.decode() if isinstance(s, bytes) else str(s)

    names = [text(s) for s in load("videoname")]
    subsets = [{"validation": "train", "test": "test"}.get(text(s)) for s in load("subset")]
    durations = load("duration").reshape(-1).astype(np.float64)
    segments, seg_labels = load("segments"), load("labels")
    classes = [text(s) for s in load("classlist")]
    class_index = {c: i for i, c in enumerate(classes)}
    ambiguous: dict[str, list[tuple[float, float]]] = {}
    amb_file = root / "Ambiguous_test.txt"
    if amb_file.exists():
        for line in amb_file.read_text().splitlines():
            fields = line.strip().split(" ")
            if len(fields) >= 4:
                ambiguous.setdefault(fields[0], []).append((float(fields[2]), float(fields[3])))
    layouts: list[Layout] = []
    counts = dict.fromkeys(SPLITS, 0)
    for v, (name, subset) in enumerate(zip(names, subsets)):
        if subset is None or (cfg.max_videos is not None and counts[subset] >= cfg.max_videos):
            continue
        dur = float(durations[v])
        segs = np.clip(np.asarray(segments[v], dtype=np.float64).reshape(-1, 2), 0.0, dur)
        labs = np.asarray([class_index[text(c)] for c in seg_labels[v]], dtype=np.int64)
        keep = segs[:, 1] > segs[:, 0]
        amb = np.clip(np.asarray(ambiguous.get(name, []), dtype=np.float64).reshape(-1, 2), 0.0, dur)
        amb = amb[amb[:, 1] > amb[:, 0]]
        layouts.append(Layout(name, subset, counts[subset], dur, segs[keep], labs[keep], amb, True))
        counts[subset] += 1
    return classes, layouts


def layouts(cfg: SyntheticConfig) -> tuple[list[str], Iterator[Layout]]:
    """Class names and the (lazy) layouts of all videos: train split first, then test."""
    if cfg.from_annotations:
        classes, items = _annotation_layouts(cfg)
        return classes, iter(items)
    classes = cfg.class_names or default_class_names(cfg.num_classes)
    counts = {"train": cfg.num_train, "test": cfg.num_test}
    return classes, (_synthetic_layout(cfg, s, i) for s in SPLITS for i in range(counts[s]))



def _ramps(centers: np.ndarray, bounds: np.ndarray, width: float) -> np.ndarray:
    """[T, n] activation of each interval at each snippet centre: linear ramps of ``width`` s."""
    t = centers[:, None]
    up = np.clip((t - bounds[None, :, 0]) / width + 0.5, 0.0, 1.0)
    down = np.clip((bounds[None, :, 1] - t) / width + 0.5, 0.0, 1.0)
    return up * down


def _ar1(innov: np.ndarray, coef: np.ndarray, first: np.ndarray) -> np.ndarray:
    """y[0] = first, y[t] = coef * y[t-1] + innov[t] (columns independent)."""
    out = np.empty_like(innov)
    out[0] = first
    for t in range(1, len(innov)):
        out[t] = coef * out[t - 1] + innov[t]
    return out


def _latent(cfg: SyntheticConfig, world: World, layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """[T, L] latent trajectory of one video."""
    ss, dim = cfg.snippet_seconds, cfg.latent_dim
    T = num_snippets(layout.duration, ss)
    centers = (np.arange(T) + 0.5) * ss
    segs, labels = layout.segments, layout.segment_labels
    main = int(np.bincount(labels).argmax()) if len(labels) else None
    width = max(cfg.boundary_ramp_snippets, 1.0) * ss

    # action instances (ambiguous intervals act as weak instances of the main class)
    events = segs
    ev_labels = labels
    amp = np.exp(cfg.amplitude_sigma * rng.standard_normal(len(segs)) - cfg.amplitude_sigma**2 / 2)
    if main is not None and len(layout.ambiguous):
        events = np.concatenate([segs, layout.ambiguous])
        ev_labels = np.concatenate([labels, np.full(len(layout.ambiguous), main)])
        amp = np.concatenate([amp, np.full(len(layout.ambiguous), cfg.ambiguous_strength)])
    protos = world.prototypes[ev_labels]
    vectors = protos + cfg.instance_std * rng.standard_normal((len(events), dim))
    r = _ramps(centers, events, width)
    r /= np.maximum(1.0, r.sum(1, keepdims=True))
    active = r.sum(1)  # in [0, 1]
    z = cfg.action_strength * (r * amp) @ vectors
    motion = r @ amp

    # context: the class prototype, without motion, fading away from each instance
    if len(segs):
        dist = np.maximum(segs[None, :, 0] - centers[:, None], centers[:, None] - segs[None, :, 1])
        ctx = np.exp(-np.maximum(dist, 0.0) / max(cfg.context_seconds, 1e-6))
        ctx /= np.maximum(1.0, ctx.sum(1, keepdims=True))
        z += cfg.context_strength * (1.0 - active)[:, None] * (ctx @ world.prototypes[labels])
        z += cfg.class_scene_strength * world.prototypes[main]

    # motion-only distractors in the background
    n_dis = rng.poisson(cfg.distractor_rate * layout.duration)
    if n_dis:
        lengths = _lognormal(rng, cfg.distractor_seconds_median, 0.5, n_dis)
        starts = rng.random(n_dis) * np.maximum(layout.duration - lengths, 0.0)
        dis = _ramps(centers, np.stack([starts, starts + lengths], 1), width).max(1)
        motion = motion + cfg.distractor_strength * dis * (1.0 - active)
    z += cfg.motion_strength * motion[:, None] * world.motion

    # scene: per-video vector, changed abruptly at shot changes inside the background
    cuts = np.sort(rng.random(rng.poisson(cfg.shot_change_rate * layout.duration)) * layout.duration)
    cuts = cuts[active[np.minimum((cuts / ss).astype(int), T - 1)] == 0.0]
    shots = cfg.scene_std * rng.standard_normal(dim) + cfg.shot_std * rng.standard_normal((len(cuts) + 1, dim))
    z += shots[np.searchsorted(cuts, centers)]

    # smooth noise and slow drift: AR(1) processes with stationary std noise_std / drift_std
    coef = np.concatenate([
        np.full(dim, cfg.noise_smoothing), np.full(dim, math.exp(-ss / max(cfg.drift_seconds, 1e-6)))
    ])
    std = np.concatenate([np.full(dim, cfg.noise_std), np.full(dim, cfg.drift_std)])
    innov = rng.standard_normal((T, 2 * dim)) * (std * np.sqrt(1.0 - coef**2))
    proc = _ar1(innov, coef, std * rng.standard_normal(2 * dim))
    return z + proc[:, :dim] + proc[:, dim:]


def render_features(cfg: SyntheticConfig, world: World, layout: Layout) -> np.ndarray:
    """[T, D] float32 non-negative features of one video."""
    rng = _rng(cfg, _SPLIT_KEY[layout.subset], layout.index, 1)
    z = _latent(cfg, world, layout, rng).astype(np.float32)
    h = z @ world.decoder + world.bias
    if cfg.channel_noise_std > 0:
        h += np.float32(cfg.channel_noise_std) * rng.standard_normal(h.shape, dtype=np.float32)
    return np.logaddexp(np.float32(0.0), h)  # softplus


def iter_videos(cfg: SyntheticConfig) -> tuple[list[str], Iterator[VideoEntry]]:
    """Class names and a generator of the dataset's videos (one in memory at a time)."""
    classes, items = layouts(cfg)
    world = make_world(cfg, classes)

    def gen() -> Iterator[VideoEntry]:
        for lay in items:
            labels = np.zeros(len(classes), dtype=np.uint8)
            labels[lay.segment_labels] = 1
            yield VideoEntry(
                video_id=lay.video_id, subset=lay.subset, duration=lay.duration,
                features=render_features(cfg, world, lay), labels=labels,
                segments=lay.segments, segment_labels=lay.segment_labels,
                ambiguous=lay.ambiguous if lay.ambiguous_annotated else np.zeros((0, 2)),
            )

    return classes, gen()


def generate(cfg: SyntheticConfig, out_path: str | Path, overwrite: bool = False) -> Path:
    """Write the dataset of ``cfg`` to ``out_path`` (HDF5, project schema) and return the path."""
    classes, videos = iter_videos(cfg)
    return write_feature_file(
        out_path, videos, classes, snippet_seconds=cfg.snippet_seconds, feature_name=_FEATURE_NAME,
        source={"generator": "issf.data.synthetic", "from_annotations": cfg.from_annotations},
        dtype=cfg.dtype, overwrite=overwrite, extra_attrs={"synthetic_config": asdict(cfg), "synthetic_version": GENERATOR_VERSION},
    )


def stored_config(path: str | Path) -> tuple[dict[str, Any] | None, int | None]:
    """The generator config and version stored in a feature file (None when absent or unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            cfg = json.loads(f.attrs["synthetic_config"]) if "synthetic_config" in f.attrs else None
            version = json.loads(f.attrs["synthetic_version"]) if "synthetic_version" in f.attrs else None
            return cfg, version
    except (OSError, ValueError):
        return None, None


def settings_hash(cfg: SyntheticConfig) -> str:
    """8 hex digits identifying the generator settings and version (part of a dataset's file name)."""
    text = json.dumps([cfg.to_json(), GENERATOR_VERSION], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dataset_path(cfg: SyntheticConfig, out_path: str | Path) -> Path:
    """Where the dataset of ``cfg`` lives: ``out_path`` unless that file holds other settings (or
    another generator version), then ``<stem>-<settings hash><suffix>`` beside it. A file is never
    regenerated in place with other settings, so a training or evaluation reading it keeps its
    features; each setting gets its own file."""
    out_path = Path(out_path)
    if not out_path.exists() or stored_config(out_path) == (cfg.to_json(), GENERATOR_VERSION):
        return out_path
    return out_path.with_name(f"{out_path.stem}-{settings_hash(cfg)}{out_path.suffix}")


def ensure_dataset(cfg: SyntheticConfig, out_path: str | Path) -> Path:
    """The path of the dataset of exactly this config and generator version (:func:`dataset_path`),
    generated when missing; returns it."""
    path = dataset_path(cfg, out_path)
    if path.exists() and stored_config(path) == (cfg.to_json(), GENERATOR_VERSION):
        return path
    return generate(cfg, path, overwrite=True)
