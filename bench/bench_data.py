"""Benchmark: converting and reading a THUMOS-scale feature file.

Full size: 412 videos with the THUMOS'14 lengths (floor(duration * 25/16) snippets from the real
W-TALC ``duration.npy`` of ``data/reference``), 2048-d float32, about 1.1 GB. Cases:

* conversion time, MB/s and peak RSS of ``convert_per_video`` (per-video ``.npy`` files, streamed
  and memory-mapped; ACM-Net's gt.json as annotation) and ``convert_wtalc`` (one pickled object
  array, which the format forces to load whole);
* read throughput in snippets/s: ``FeatureFile.features`` over every video, and a torch
  DataLoader with 0 and 2 workers (steady second epoch, persistent workers);
* peak RSS of a full read pass over the base file and over files ``--scales`` times as large
  (default 1 and 4: ~1.1 GB and ~4.5 GB). It must not grow with the file size.

``--quick`` runs the same cases with 64-d features (~35 MB and ~140 MB). Every measurement runs in
a fresh child process, so its RSS is that of the measured work alone. The page cache is warm (the
files were just written; caches are not dropped on a shared machine). Files go to
``data/bench/bench_data/`` (git-ignored) and are deleted at the end unless ``--keep``.
Appends ``{date, machine, command, benchmark, case, value, unit}`` records to ``bench/results.json``.

    python bench/bench_data.py [--quick] [--scales 1 4] [--keep] [--no-record]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import THUMOS_WTALC, record, unpack  # noqa: E402
from issf.data.h5 import FeatureFile, VideoEntry, write_feature_file  # noqa: E402

THUMOS = THUMOS_WTALC
ACMNET_GT = "thumos14/acmnet/gt.json.gz"  # in data/reference; a plain copy goes to WORK
WORK = ROOT / "data" / "bench" / "bench_data"
MB = 2**20


# ----------------------------------------------------------------------------------------------
# child processes: one measurement each, result as the last line of stdout (JSON)


def _peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_read(path: str) -> dict:
    ff = FeatureFile(path)
    rss_open = _peak_rss_mb()
    t0 = time.perf_counter()
    snippets = 0
    for i in range(len(ff)):
        snippets += len(ff.features(i))
    return {"seconds": time.perf_counter() - t0, "snippets": snippets, "rss_open_mb": rss_open,
            "peak_rss_mb": _peak_rss_mb()}


def _child_loader(path: str, workers: int, epochs: int = 2) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset

    torch.set_num_threads(1)

    class Videos(Dataset):
        def __init__(self, ff: FeatureFile):
            self.ff = ff

        def __len__(self) -> int:
            return len(self.ff)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.from_numpy(self.ff.features(i))

    loader = DataLoader(Videos(FeatureFile(path)), batch_size=None, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    times, snippets = [], 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        snippets = sum(len(x) for x in loader)
        times.append(time.perf_counter() - t0)
    return {"epoch_seconds": times, "snippets": snippets, "peak_rss_mb": _peak_rss_mb()}


def _child_convert(kind: str, kwargs: dict) -> dict:
    from issf.data.prepare import convert_per_video, convert_wtalc

    t0 = time.perf_counter()
    report = (convert_wtalc if kind == "wtalc" else convert_per_video)(**kwargs)
    return {"seconds": time.perf_counter() - t0, "snippets": report.snippets, "warnings": report.warning_counts(),
            "peak_rss_mb": _peak_rss_mb()}


def _run_child(task: str, **kwargs) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", task, json.dumps(kwargs)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# inputs


def thumos_lengths() -> tuple[list[str], np.ndarray]:
    names = [v.decode() for v in np.load(THUMOS / "videoname.npy")]
    durations = np.load(THUMOS / "duration.npy").reshape(-1)
    return names, np.maximum(1, np.floor(durations * 25 / 16)).astype(np.int64)


def write_sources(work: Path, names: list[str], lengths: np.ndarray, dim: int) -> tuple[Path, Path]:
    """Per-video ``<id>.npy`` files and the W-TALC object array of the same features."""
    rng = np.random.default_rng(0)
    pv = work / "per_video"
    pv.mkdir(parents=True)
    for vid, t in zip(names, lengths):
        np.save(pv / f"{vid}.npy", rng.standard_normal((int(t), dim), dtype=np.float32))
    arr = np.empty(len(names), dtype=object)
    for i, vid in enumerate(names):
        arr[i] = np.load(pv / f"{vid}.npy")
    wtalc = work / "Thumos14reduced-I3D-JOINTFeatures.npy"
    np.save(wtalc, arr, allow_pickle=True)
    return pv, wtalc


def write_scaled(base: Path, out: Path, scale: int) -> Path:
    """A file holding every video of ``base`` ``scale`` times (streamed from ``base``)."""
    ff = FeatureFile(base)

    def videos() -> Iterator[VideoEntry]:
        for r in range(scale):
            for i, vid in enumerate(ff.video_ids):
                yield VideoEntry(f"{vid}#{r}", str(ff.subsets[i]), float(ff.durations[i]), ff.features(i),
                                 ff.labels[i])

    return write_feature_file(out, videos(), ff.class_names, snippet_seconds=ff.snippet_seconds,
                              feature_name=ff.feature_name, source={"bench": str(base), "scale": scale})


# ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[dict]:
    dim = 64 if args.quick else 2048
    names, lengths = thumos_lengths()
    total = int(lengths.sum())
    need = total * dim * 4 * (3 + sum(args.scales))  # sources x2, converted x2 (one at a time), scaled
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    free = shutil.disk_usage(WORK).free
    if free < need * 1.2:
        raise SystemExit(f"needs about {need / 2**30:.1f} GiB in {WORK}, {free / 2**30:.1f} GiB free")

    size = f"{len(names)} videos, {total} snippets, D={dim}, float32, {total * dim * 4 / 1e9:.2f} GB"
    entries: list[dict] = []

    def add(case: str, value: float, unit: str) -> None:
        entry = {"benchmark": "data", "case": case, "value": value, "unit": unit}
        print(f"{value:14.1f} {unit:12s} {case}", flush=True)
        entries.append(entry)

    try:
        pv, wtalc_file = write_sources(WORK, names, lengths, dim)
        acmnet_gt = unpack(ACMNET_GT, WORK)
        base = WORK / "thumos_pv.h5"
        conv = {
            "per_video": dict(feature_dir=str(pv), annotation_file=str(acmnet_gt), out_path=str(base),
                              subset_map={"validation": "train", "test": "test"}),
            "wtalc": dict(folder=str(THUMOS), out_path=str(WORK / "thumos_wtalc.h5"),
                          feature_file=str(wtalc_file)),
        }
        for kind, kwargs in conv.items():
            res = _run_child("convert", kind=kind, kwargs=kwargs)
            name = f"convert_{kind} THUMOS-scale ({size})"
            add(f"{name}: time", res["seconds"], "s")
            add(f"{name}: throughput", total * dim * 4 / MB / res["seconds"], "MB/s")
            add(f"{name}: peak RSS of the converting process", res["peak_rss_mb"], "MB")
        (WORK / "thumos_wtalc.h5").unlink()
        wtalc_file.unlink()
        shutil.rmtree(pv)

        res = _run_child("read", path=str(base))
        add(f"read FeatureFile.features, full pass, warm cache ({size})", res["snippets"] / res["seconds"],
            "snippets/s")
        for workers in (0, 2):
            res = _run_child("loader", path=str(base), workers=workers)
            add(f"read torch DataLoader workers={workers}, batch_size=None, 2nd epoch ({size})",
                res["snippets"] / res["epoch_seconds"][-1], "snippets/s")

        peaks = {}
        for scale in args.scales:
            path = base if scale == 1 else write_scaled(base, WORK / f"thumos_x{scale}.h5", scale)
            gb = path.stat().st_size / 1e9
            res = _run_child("read", path=str(path))
            peaks[scale] = res["peak_rss_mb"]
            add(f"peak RSS of a full FeatureFile read pass, file {gb:.2f} GB ({scale} x {size})",
                res["peak_rss_mb"], "MB")
            if path != base:
                path.unlink()
        if len(peaks) > 1:
            lo, hi = min(peaks), max(peaks)
            print(f"peak RSS x{hi} / x{lo}: {peaks[hi] / peaks[lo]:.2f} (must stay ~1: memory independent of file size)")
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    if not args.no_record:
        for entry in entries:
            record(entry)
    return entries


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64-d features (~35 MB) instead of 2048-d (~1.1 GB)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4],
                        help="file sizes (multiples of the base file) for the peak-RSS read pass")
    parser.add_argument("--keep", action="store_true", help=f"keep the generated files in {WORK}")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results.json")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        task, kwargs = args.child[0], json.loads(args.child[1])
        fn = {"read": _child_read, "loader": _child_loader, "convert": _child_convert}[task]
        print(json.dumps(fn(**kwargs)))
        return []
    return run(args)


if __name__ == "__main__":
    main()
