"""Training-epoch benchmark at THUMOS scale: 200 training videos, 2048-d features.

The videos have the durations of the 200 THUMOS'14 validation videos (mean 326 snippets, median
235, max 2202; the real annotations of data/reference) and synthetic features. Times
one training epoch of the full ISSF model (memory branch active, as in 178 of the 180 epochs)
batched (B = 10, length-bucketed) and one video at a time (B = 1, our own code), after one untimed
warm-up epoch, with the thread count stated; records wall and process-CPU seconds and peak RSS.
Reference on this machine: the official code needs ~92 CPU-seconds per epoch with 1 thread;
target <= 30.

    python bench/bench_train.py [--threads 1] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import THUMOS_WTALC, record  # noqa: E402
from issf.data.datamodule import FeatureDataModule  # noqa: E402
from issf.data.synthetic import SyntheticConfig, ensure_dataset  # noqa: E402
from issf.model.config import ISSFConfig  # noqa: E402
from issf.model.network import ISSF  # noqa: E402
from issf.train.runtime import configure_cpu  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "bench"


def thumos_scale_data(quick: bool) -> tuple[Path, str]:
    """The THUMOS'14 validation layouts (200 videos, mean 327 snippets, max 2202) with synthetic
    2048-d features (generated once into data/bench/)."""
    if not (THUMOS_WTALC / "duration.npy").is_file():
        raise FileNotFoundError(f"THUMOS'14 annotations missing under {THUMOS_WTALC}")
    cfg = SyntheticConfig(seed=1, feature_dim=2048, dtype="float16", from_annotations=str(THUMOS_WTALC),
                          max_videos=40 if quick else None)
    return ensure_dataset(cfg, DATA / ("train_thumos_layout_quick.h5" if quick else "train_thumos_layout.h5")), \
        "thumos14_validation_layouts"


def run_epoch(
    net: ISSF, opt: torch.optim.Optimizer, loader, device: torch.device, epoch: int, amp: bool = False
) -> tuple[float, float, int]:
    """Wall seconds, process CPU seconds and snippets of one training epoch (bf16 autocast with ``amp``)."""
    snippets = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in loader:
        x, mask, y = (batch[k].to(device, non_blocking=True) for k in ("features", "mask", "labels"))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            terms, _ = net.losses(x, mask, y, epoch, lengths=batch["host_lengths"], classes=batch["host_classes"])
        opt.zero_grad(set_to_none=True)
        terms["total"].sum().backward()
        opt.step()
        snippets += int(batch["lengths"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start, snippets


RELEASED_CPU_SECONDS = 92.0  # the released code's THUMOS'14 epoch on one CPU thread (docs/released_code.md)


def network_settings(name: str) -> dict:
    """``recipe``: the network the recipes train (conf/model/issf.yaml over the library defaults);
    ``released``: the released code's network and memory (conf/ablation/released.yaml)."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    if name == "recipe":
        network = yaml.safe_load((conf / "model" / "issf.yaml").read_text())["network"]
    elif name == "released":
        network = yaml.safe_load((conf / "ablation" / "released.yaml").read_text())
    else:
        raise ValueError(f"network must be recipe or released, got {name!r}")
    return {k: v for k, v in network.items() if k != "defaults" and not (isinstance(v, str) and v.startswith("${"))}


def bench_mode(
    path: Path, batch_size: int, device: torch.device, epochs: int, amp: bool = False, workers: int = 0,
    network: str = "recipe",
) -> dict:
    torch.manual_seed(0)
    dm = FeatureDataModule(
        str(path), batch_size=batch_size, eval_batch_size=16, bucket=batch_size > 1, num_workers=workers
    )
    dm.setup()
    net = ISSF(ISSFConfig(num_classes=dm.file.num_classes, input_dim=dm.feature_dim,
                          **network_settings(network))).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=5e-5, betas=(0.9, 0.99), weight_decay=5e-4, fused=True)
    net.eval()  # memory initialisation pass, so that the timed epochs use the memory branch
    for batch in dm.memory_init_dataloader():
        net.insert_into_memory(batch["features"].to(device), batch["mask"].to(device),
                               batch["labels"].to(device), epoch=1)
    net.memory.initialized.fill_(True)
    net.train()
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epochs)  # warm-up (heap growth, kernels) in an order the timed epochs do not use
    warmup, _, _ = run_epoch(net, opt, loader, device, epoch=2, amp=amp)
    times, cpu_times = [], []
    for e in range(epochs):
        loader.batch_sampler.set_epoch(e)
        seconds, cpu_seconds, snippets = run_epoch(net, opt, loader, device, epoch=2 + e, amp=amp)
        times.append(seconds)
        cpu_times.append(cpu_seconds)
    best = min(times)
    return {"seconds_per_epoch": best, "median_seconds_per_epoch": float(np.median(times)), "all_epochs": times,
            "warmup_epoch_seconds": warmup,
            "cpu_seconds_per_epoch": min(cpu_times), "all_epochs_cpu": cpu_times, "snippets_per_second": snippets / best,
            "videos": len(dm.train_indices), "mean_snippets": float(np.mean(dm.file.lengths[dm.train_indices]))}


def main(argv: list[str] | None = None) -> list[dict]:
    configure_cpu()  # as the training task does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per mode (best and median reported)")
    parser.add_argument("--modes", default="batched,single")
    parser.add_argument("--networks", default="recipe,released",
                        help="recipe (the recipes' network, background bank on) and/or released (the released code's)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--quick", action="store_true", help="40 videos instead of 200")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: in-process)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    path, layouts = thumos_scale_data(args.quick)
    entries = []
    for mode, network in [(m, n) for m in args.modes.split(",") for n in args.networks.split(",")]:
        batch = 10 if mode == "batched" else 1
        result = bench_mode(path, batch, device, args.epochs, args.amp, args.workers, network)
        entry = {
            "benchmark": "train_epoch", "network": network,
            # the recipes' network keeps the case name of the earlier records, which timed the library's
            # default network: the recipes' network is that one (conf/model/issf.yaml sets no network key)
            "case": f"thumos_scale_{mode}_B{batch}" + ("" if network == "recipe" else f"_{network}")
                    + ("_quick" if args.quick else ""),
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "threads": args.threads, "workers": args.workers, "amp_bf16": args.amp, "layouts": layouts, **result,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if device.type == "cuda":
            entry["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        entry["speedup_vs_released_code"] = RELEASED_CPU_SECONDS / result["cpu_seconds_per_epoch"]
        print(f"{entry['case']}: {result['seconds_per_epoch']:.2f} s/epoch "
              f"(median {result['median_seconds_per_epoch']:.2f}, {result['cpu_seconds_per_epoch']:.2f} CPU-s), "
              f"{result['snippets_per_second']:.0f} snippets/s ({args.threads} threads, {entry['device']}); "
              f"{entry['speedup_vs_released_code']:.2f}x the released code's {RELEASED_CPU_SECONDS:.0f} CPU-s")
        record(entry)
        entries.append(entry)
    return entries


if __name__ == "__main__":
    main()
