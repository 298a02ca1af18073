"""Benchmark: localization (CAS -> proposals -> NMS) of 213 THUMOS-scale test videos on one thread.

Synthetic but realistic inputs: T per video drawn with mean ~340 snippets, 20 classes, each CAS
column a smooth log-normal baseline crossing the low thresholds plus plateau bumps for the classes
present in the video; about 2 classes per video have a video score above the class threshold.
The inputs of the evaluation case ``actloc_05_thumos_random`` of ``data/reference`` (a CAS on the
real THUMOS'14 test split, 212 videos) are timed as a second case. ``--quick``: 20 synthetic
videos, one repeat, no second case. Appends one ``{date, machine, command, benchmark, case, seconds, ...}``
record per case to ``bench/results.json``.

    python bench/bench_localize.py [--videos 213] [--repeats 3] [--quick] [--no-record]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import WTALC_CASES, case, record, report  # noqa: E402
from issf.data.annotations import GroundTruth  # noqa: E402
from issf.eval.localize import LocalizationConfig, localize  # noqa: E402
from issf.eval.metric import TemporalDetectionMAP  # noqa: E402
from tests.eval.test_localize import actloc_inputs  # noqa: E402

REAL_CASE = "actloc_05_thumos_random"  # second case: a CAS on the real THUMOS'14 test split


def random_ground_truth(cas_list: list[np.ndarray], n_classes: int, seed: int = 1) -> GroundTruth:
    """About 15 segments per video (seconds), for timing the metric on the localized detections."""
    rng = np.random.default_rng(seed)
    segs, vids, labels = [], [], []
    for v, cas in enumerate(cas_list):
        duration = len(cas) * 0.64
        start = rng.uniform(0, duration * 0.9, 15)
        segs.append(np.stack([start, np.minimum(start + rng.uniform(0.5, 10, 15), duration)], 1))
        vids.append(np.full(15, v))
        labels.append(rng.integers(0, n_classes, 15))
    return GroundTruth([f"c{i}" for i in range(n_classes)], [f"v{i}" for i in range(len(cas_list))],
                       np.array([len(c) * 0.64 for c in cas_list]), np.concatenate(segs), np.concatenate(vids),
                       np.concatenate(labels))


def localize_and_score(cas_list: list[np.ndarray], scores: np.ndarray, cfg: LocalizationConfig,
                       gt: GroundTruth) -> float:
    """Seconds for localization plus mAP@0.1:0.7 (anet protocol) of its detections."""
    t0 = time.perf_counter()
    det = localize(cas_list, scores, cfg).to_seconds(0.64, gt.durations)
    det = det.select(det.end > det.start)
    metric = TemporalDetectionMAP(gt, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    metric.update(*(torch.as_tensor(a) for a in (det.video, det.start, det.end, det.label, det.score)))
    metric.compute()
    return time.perf_counter() - t0


def synthetic_inputs(
    n_videos: int = 213, n_classes: int = 20, mean_len: int = 340, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """CAS ``[T_i, C]`` float32 per video and video scores ``[V, C]`` float32."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.gamma(2.0, mean_len / 2.0, n_videos), 20, 3000).astype(int)
    cas_list, scores = [], np.zeros((n_videos, n_classes), np.float32)
    kernel = np.hanning(15) / np.hanning(15).sum()
    for v, t in enumerate(lengths):
        noise = rng.normal(0.0, 1.0, (t + len(kernel) - 1, n_classes))
        smooth = np.stack([np.convolve(noise[:, c], kernel, "valid") for c in range(n_classes)], axis=1)
        smooth /= smooth.std()
        cas = 0.008 * np.exp(0.9 * smooth)  # log-normal baseline crossing the low thresholds
        present = rng.choice(n_classes, size=rng.integers(1, 3), replace=False)
        for c in present:
            for _ in range(rng.integers(1, 8)):
                length = int(rng.integers(3, max(4, t // 6)))
                s = int(rng.integers(0, max(1, t - length)))
                cas[s : s + length, c] += rng.uniform(0.02, 0.4) * (
                    1 + 0.2 * rng.normal(size=len(cas[s : s + length]))
                )
        scores[v] = rng.uniform(0.0, 0.09, n_classes)
        scores[v, present] = rng.uniform(0.2, 0.95, len(present))
        if rng.random() < 0.5:  # a distractor class above the class threshold
            scores[v, rng.integers(n_classes)] = rng.uniform(0.105, 0.5)
        cas_list.append(np.clip(cas, 0.0, 0.95).astype(np.float32))
    return cas_list, scores


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=213)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 synthetic videos, one repeat, no second case")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.repeats = 20, 1

    cases = {"synthetic": synthetic_inputs(args.videos)}
    if not args.quick:
        cases[f"inputs of {REAL_CASE}.json.gz"] = actloc_inputs(case(WTALC_CASES, REAL_CASE))
    cfg = LocalizationConfig()
    entries = []
    for name, (cas_list, scores) in cases.items():
        times, det = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            det = localize(cas_list, scores, cfg)
            times.append(time.perf_counter() - t0)
        entry = {
            "benchmark": "localize",
            "case": f"localize (official defaults, 1 thread), {name}: {len(cas_list)} videos, mean T "
            f"{np.mean([len(c) for c in cas_list]):.0f}, {scores.shape[1]} columns",
            "seconds": min(times),
            "all_seconds": times,
            "detections": len(det),
            "seconds_localize_and_metric": min(
                localize_and_score(cas_list, scores, cfg, random_ground_truth(cas_list, scores.shape[1]))
                for _ in range(args.repeats)
            ),
            "classes_above_threshold_per_video": float((scores >= cfg.class_threshold).sum(1).mean()),
        }
        report(entry, entries, None if args.no_record else record)
    entry = rescore_stored_predictions(*cases["synthetic"], repeats=args.repeats)
    report(entry, entries, None if args.no_record else record)
    return entries


def rescore_stored_predictions(cas_list: list[np.ndarray], scores: np.ndarray, repeats: int) -> dict:
    """Seconds to read a predictions.h5 of these videos and re-localize + score them (task=eval
    predictions=..., the official THUMOS settings), and the file's size."""
    import tempfile

    from issf.eval.evaluator import EvaluationConfig
    from issf.eval.predictions import read_predictions, score_predictions, write_predictions

    gt = random_ground_truth(cas_list, scores.shape[1])
    gt.labels = (scores >= 0.1).astype(np.uint8)
    rows = [(v, scores[v], cas, 1.0) for v, cas in enumerate(cas_list)]
    with tempfile.TemporaryDirectory() as folder:
        path = write_predictions(Path(folder) / "predictions.h5", rows, gt, 0.64, {})
        size = path.stat().st_size
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            score_predictions(read_predictions(path), gt, EvaluationConfig())
            times.append(time.perf_counter() - t0)
    return {"benchmark": "rescore_predictions",
            "case": f"read predictions.h5 + localize + mAP@0.1:0.7 (official settings, 1 thread): {len(cas_list)} "
                    f"videos, mean T {np.mean([len(c) for c in cas_list]):.0f}, {scores.shape[1]} classes",
            "seconds": min(times), "all_seconds": times, "predictions_bytes": size}


if __name__ == "__main__":
    main()
