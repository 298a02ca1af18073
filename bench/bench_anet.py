"""ActivityNet-scale benchmarks: training steps on ActivityNet-shaped batches and the evaluation of
4,926 validation-shaped videos.

* ``anet_train``: the full ISSF model with ``anet_full``'s network settings and a memory of 200
  classes x 9 slots (initialised, so every step uses the memory branch), batches of B = 64 videos
  sampled to 75 snippets of 2048-d features; one untimed warm-up step, then the best of the timed
  steps. Compare ``snippets_per_second`` with the THUMOS training benchmark (bench_train.py).
* ``anet_eval``: 4,926 videos with durations and ground truth drawn from the real ActivityNet v1.3
  annotations (data/reference, BSN's annotation file), T = duration / 0.64 s snippets, a flat
  201-way-softmax-like CAS with bumps on the ground-truth segments; ``data=activitynet13``'s
  evaluation (class selection, CAS upsampling x20, IoU-NMS 0.9, 100 detections per video) and
  the official mAP at tIoU 0.5:0.95, through the same evaluator as training. Target: <= 30 s on
  one core.

Peak RSS is recorded for both (the evaluation runs first, in its own process through run_all).

    python bench/bench_anet.py [--cases eval,train] [--steps 5] [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import REFERENCE, record, report  # noqa: E402
from issf.data.annotations import GroundTruth  # noqa: E402
from issf.eval.evaluator import EvaluationConfig, VideoEvaluator  # noqa: E402
from issf.eval.localize import select_classes  # noqa: E402
from issf.model.config import ISSFConfig  # noqa: E402
from issf.model.network import ISSF  # noqa: E402
from issf.train.runtime import configure_cpu  # noqa: E402

SNIPPET_SECONDS = 16 / 25
ANET_VIDEOS = 4926  # ActivityNet v1.3 validation videos
ANNOTATIONS = REFERENCE / "activitynet13" / "bsn" / "anet_anno_action.json.gz"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anet_evaluation_config() -> EvaluationConfig:
    """``data=activitynet13``'s evaluation block, read from conf/ (no Hydra needed)."""
    block = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "activitynet13.yaml").evaluation)
    return EvaluationConfig(**block)


def validation_shaped_ground_truth(n_videos: int, seed: int = 0) -> GroundTruth:
    """``n_videos`` real ActivityNet v1.3 annotated videos (durations, segments, 200 classes)."""
    annotations = json.load(gzip.open(ANNOTATIONS))
    rng = np.random.default_rng(seed)
    names = sorted(annotations)
    chosen = [names[i] for i in rng.choice(len(names), size=n_videos, replace=False)]
    classes = sorted({a["label"] for v in annotations.values() for a in v["annotations"]})
    index = {c: i for i, c in enumerate(classes)}
    segs, seg_video, seg_label = [], [], []
    for v, name in enumerate(chosen):
        for a in annotations[name]["annotations"]:
            segs.append(a["segment"])
            seg_video.append(v)
            seg_label.append(index[a["label"]])
    durations = np.array([annotations[n]["duration_second"] for n in chosen])
    segments = np.clip(np.asarray(segs, dtype=np.float64), 0.0, durations[np.asarray(seg_video)][:, None])
    return GroundTruth(classes, chosen, durations, segments, np.asarray(seg_video), np.asarray(seg_label))


def model_like_outputs(gt: GroundTruth, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Per video: CAS ``[T, C]`` with the flat values of a 201-way softmax plus bumps on the
    ground-truth segments, and video scores ``[C]`` of a softmax over C + 1 logits in which the
    ground-truth classes and one other class stand out (top score ~0.05, as a trained
    ``anet_full`` head gives)."""
    rng = np.random.default_rng(seed)
    n_classes = len(gt.class_names)
    cas_list, scores = [], np.zeros((len(gt.video_ids), n_classes), np.float32)
    for v, duration in enumerate(gt.durations):
        t = max(1, int(round(duration / SNIPPET_SECONDS)))
        cas = rng.gamma(4.0, 1.0 / (4.0 * (n_classes + 1)), (t, n_classes)).astype(np.float32)
        rows = np.flatnonzero(gt.segment_video == v)
        for r in rows:
            s, e = (gt.segments[r] / SNIPPET_SECONDS).astype(int)
            cas[s : max(e, s + 1), gt.segment_label[r]] += rng.uniform(0.005, 0.04)
        logits = rng.normal(0.0, 0.5, n_classes + 1)
        logits[gt.segment_label[rows]] += rng.uniform(1.5, 3.0)
        logits[rng.integers(n_classes)] += rng.uniform(0.5, 2.5)  # a confusable class
        scores[v] = (np.exp(logits) / np.exp(logits).sum())[:n_classes]
        cas_list.append(cas)
    return cas_list, scores


def bench_eval(n_videos: int, batch: int = 64) -> dict:
    gt = validation_shaped_ground_truth(n_videos)
    cas_list, scores = model_like_outputs(gt)
    cfg = anet_evaluation_config()
    loc = cfg.localization_config()
    start, cpu_start = time.perf_counter(), time.process_time()
    evaluator = VideoEvaluator(gt, cfg, SNIPPET_SECONDS)
    for first in range(0, n_videos, batch):
        videos = np.arange(first, min(first + batch, n_videos))
        lengths = np.array([len(cas_list[v]) for v in videos])
        cas = np.zeros((len(videos), lengths.max(), scores.shape[1]), np.float32)
        for i, v in enumerate(videos):
            cas[i, : lengths[i]] = cas_list[v]
        evaluator.update(torch.from_numpy(videos), torch.from_numpy(scores[videos]), torch.from_numpy(cas),
                         torch.from_numpy(lengths))
    result = evaluator.compute()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    lengths = np.array([len(c) for c in cas_list])
    return {
        "benchmark": "anet_eval",
        "case": f"{n_videos} ActivityNet-validation-shaped videos, 200 classes, localize (x20 upsampling, "
        f"IoU-NMS 0.9, <= 100 per video) + official mAP@0.5:0.95",
        "seconds": seconds, "cpu_seconds": cpu_seconds, "videos": n_videos,
        "mean_snippets": float(lengths.mean()), "max_snippets": int(lengths.max()),
        "detections": len(result["detections"]), "AVG(0.5:0.95)": result["summary"]["AVG(0.5:0.95)"],
        "class_selection": cfg.localization["class_selection"],
        "classes_localized_per_video": float(np.mean([len(select_classes(sc, loc)) for sc in scores])),
        "peak_rss_mb": peak_rss_mb(),
    }


def bench_train(steps: int, batch: int = 64, length: int = 75, dim: int = 2048, classes: int = 200) -> dict:
    torch.manual_seed(0)
    anet = OmegaConf.load(ROOT / "conf" / "experiment" / "anet_full.yaml").model.network
    cfg = ISSFConfig(num_classes=classes, input_dim=dim, **anet)
    net = ISSF(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=2e-5, weight_decay=1e-3, fused=True)  # as the training module
    rng = np.random.default_rng(0)

    def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(rng.normal(size=(batch, length, dim)).astype(np.float32))
        labels = torch.zeros(batch, classes)
        labels[torch.arange(batch), torch.from_numpy(rng.integers(0, classes, batch))] = 1.0
        return x, torch.ones(batch, length, dtype=torch.bool), labels

    net.eval()  # fill every class's slots so the timed steps use the memory branch
    for _ in range(max(1, classes * cfg.memory_slots // 128)):  # ~2 candidates per slot at B = 64
        x, mask, labels = make_batch()
        net.insert_into_memory(x, mask, labels, epoch=1)
    net.memory.initialized.fill_(True)
    net.train()
    batches = [make_batch() for _ in range(steps + 1)]
    times = []
    for i, (x, mask, labels) in enumerate(batches):
        t0 = time.perf_counter()
        # memory branch on, before EMA blending; host lengths and classes as the training module passes them
        terms, _ = net.losses(x, mask, labels, epoch=2, lengths=(length,) * batch,
                              classes=[(row > 0).nonzero().flatten().tolist() for row in labels])
        opt.zero_grad(set_to_none=True)
        terms["total"].sum().backward()
        opt.step()
        if i:  # the first step is the warm-up
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "benchmark": "anet_train",
        "case": f"ActivityNet-shaped training step: B={batch}, {length} snippets, {dim}-d, memory {classes} x "
        f"{cfg.memory_slots}, anet_full network settings",
        "seconds_per_step": best, "median_seconds_per_step": float(np.median(times)), "all_steps": times,
        "snippets_per_second": batch * length / best, "value": batch * length / best, "unit": "snippets/s",
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    configure_cpu()  # as the training task does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="eval,train")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="200 videos, 2 steps of B = 8")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    entries = []
    for name in args.cases.split(","):
        if name == "eval":
            entry = bench_eval(200 if args.quick else ANET_VIDEOS)
        elif name == "train":
            entry = bench_train(2 if args.quick else args.steps, batch=8 if args.quick else 64)
        else:
            raise SystemExit(f"unknown case {name!r}: use eval and/or train")
        entry.update(threads=args.threads, quick=args.quick)
        report(entry, entries, None if args.no_record else record)
    return entries


if __name__ == "__main__":
    main()
