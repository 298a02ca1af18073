"""Benchmark: ``TemporalDetectionMAP.compute()`` on one thread.

Cases:

* ``thumos``: the evaluation case ``20_random_thumos_scale`` of ``data/reference`` (200 videos,
  20 classes, 30,000 detections, tIoU 0.1:0.7, protocol ``anet``; the official evaluator takes
  ~45 s single-process);
* ``activitynet``: a generated ActivityNet-scale case (5,000 videos, 200 classes, 500,000
  detections, tIoU 0.5:0.95; the official evaluator takes ~580 s single-process).

Only ``compute()`` is timed (``update`` runs before the clock starts), best of ``--repeats``.
``--quick`` shrinks the generated case to 500 videos (50,000 detections) and times one repeat.
Appends ``{date, machine, command, benchmark, case, seconds, ...}`` to ``bench/results.json``.

    python bench/bench_metric.py [--cases thumos activitynet] [--repeats 3] [--quick] [--no-record]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MAP_CASES, record, report  # noqa: E402
from bench.common import case as reference_case  # noqa: E402
from issf.data.annotations import GroundTruth  # noqa: E402
from issf.eval.metric import TemporalDetectionMAP  # noqa: E402
from tests.eval.test_metrics import map_case  # noqa: E402

THUMOS_TIOU = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
ANET_TIOU = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
Detections = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def thumos_fixture_case() -> tuple[GroundTruth, Detections]:
    """Case 20 of ``data/reference/fixtures/map`` as a GroundTruth and detection columns."""
    return map_case(reference_case(MAP_CASES, "20_random_thumos_scale"))


def activitynet_case(
    n_videos: int = 5000, n_classes: int = 200, per_video: int = 100, seed: int = 0
) -> tuple[GroundTruth, Detections]:
    """ActivityNet-like random case: 1 (sometimes 2) classes and ~1.6 instances per video; per video
    ``per_video`` detections, 70 % on the video's classes (half jittered GT copies, half random
    segments) and 30 % on random classes."""
    rng = np.random.default_rng(seed)
    dur = np.round(rng.uniform(30.0, 240.0, n_videos), 2)
    n_cls_video = 1 + (rng.random(n_videos) < 0.1)
    seg_v, seg_c, seg_s, seg_e = [], [], [], []
    video_classes = []
    for v in range(n_videos):
        classes = rng.choice(n_classes, n_cls_video[v], replace=False)
        video_classes.append(classes)
        for c in classes:
            k = 1 + rng.poisson(0.6)
            length = np.minimum(rng.lognormal(np.log(0.25 * dur[v]), 0.8, k), 0.95 * dur[v])
            start = rng.uniform(0.0, dur[v] - length)
            seg_v += [v] * k
            seg_c += [c] * k
            seg_s += list(start)
            seg_e += list(start + length)
    seg_v, seg_c = np.array(seg_v), np.array(seg_c)
    seg_s, seg_e = np.round(seg_s, 2), np.round(seg_e, 2)
    gt = GroundTruth(
        class_names=[f"c{c:03d}" for c in range(n_classes)],
        video_ids=[f"v{v:05d}" for v in range(n_videos)],
        durations=dur,
        segments=np.c_[seg_s, seg_e],
        segment_video=seg_v,
        segment_label=seg_c,
    )

    n = n_videos * per_video
    video = np.repeat(np.arange(n_videos), per_video)
    on_gt_class = rng.random(n) < 0.7
    copy = on_gt_class & (rng.random(n) < 0.5)
    # a random GT segment of the video for every detection (used by copies and for their class)
    first = np.searchsorted(seg_v, np.arange(n_videos))
    n_seg = np.bincount(seg_v, minlength=n_videos)
    pick = first[video] + (rng.random(n) * n_seg[video]).astype(np.int64)
    label = np.where(on_gt_class, seg_c[pick], rng.integers(0, n_classes, n))
    length = seg_e[pick] - seg_s[pick]
    jitter = rng.normal(0.0, 0.2, (n, 2)) * length[:, None]
    rand_len = rng.uniform(0.02, 0.8, n) * dur[video]
    rand_start = rng.uniform(0.0, 1.0, n) * (dur[video] - rand_len)
    start = np.where(copy, seg_s[pick] + jitter[:, 0], rand_start)
    end = np.where(copy, seg_e[pick] + jitter[:, 1], rand_start + rand_len)
    start, end = np.clip(start, 0.0, dur[video]), np.clip(end, 0.0, dur[video])
    start, end = np.round(np.minimum(start, end), 2), np.round(np.maximum(start, end), 2)
    end = np.where(end > start, end, start + 0.01)
    score = np.where(copy, rng.beta(5, 2, n), rng.beta(2, 5, n))
    return gt, (video, start, end, label, score)


def time_compute(
    make: Callable[[], TemporalDetectionMAP], dets: Detections, repeats: int
) -> tuple[list[float], float]:
    """Seconds of ``compute()`` per repeat (fresh metric, one ``update`` per video) and the mAP."""
    times, value = [], float("nan")
    video = dets[0]
    order = np.argsort(video, kind="stable")
    bounds = np.searchsorted(video[order], np.arange(video.max() + 2))
    for _ in range(repeats):
        metric = make()
        for v in range(len(bounds) - 1):
            rows = order[bounds[v] : bounds[v + 1]]
            if len(rows):
                metric.update(*(torch.from_numpy(np.ascontiguousarray(col[rows])) for col in dets))
        t0 = time.perf_counter()
        result = metric.compute()
        times.append(time.perf_counter() - t0)
        value = float(result["map_avg"])
    return times, value


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", default=["thumos", "activitynet"], choices=["thumos", "activitynet"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500-video generated case, one repeat")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats

    entries = []
    for case in args.cases:
        if case == "thumos":
            gt, dets = thumos_fixture_case()
            thresholds, desc = THUMOS_TIOU, "fixture 20_random_thumos_scale"
        elif args.quick:
            gt, dets = activitynet_case(n_videos=500)
            thresholds, desc = ANET_TIOU, "generated activitynet-like, quick (seed 0)"
        else:
            gt, dets = activitynet_case()
            thresholds, desc = ANET_TIOU, "generated activitynet-scale (seed 0)"
        times, value = time_compute(lambda gt=gt, t=thresholds: TemporalDetectionMAP(gt, t), dets, repeats)
        entry = {
            "benchmark": "metric_compute",
            "case": f"TemporalDetectionMAP.compute anet, {desc}: {gt.num_videos} videos, {gt.num_classes} classes, "
            f"{len(gt.segments)} GT, {len(dets[0])} detections, {len(thresholds)} tIoUs, 1 thread",
            "seconds": min(times),
            "all_seconds": times,
            "map_avg": value,
        }
        report(entry, entries, None if args.no_record else record)
    return entries


if __name__ == "__main__":
    main()
