"""TemporalDetectionMAP under 2-process DDP on CPU (Lightning ``ddp_fork``) gives exactly the
single-process values: padded DistributedSampler (a video evaluated twice), uneven shards, and a
rank that never calls ``update``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from issf.data.annotations import GroundTruth
from issf.eval.metric import TemporalDetectionMAP
from tests import reference
from tests.eval.test_metrics import map_case

pytestmark = pytest.mark.slow

THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
N_SILENT = 3  # videos whose detections are removed (a model that found nothing there)


def case() -> tuple[GroundTruth, tuple[np.ndarray, ...]]:
    """Fixture 19 with scores rounded to 2 decimals (many ties across videos) and no detection on
    the last ``N_SILENT`` videos."""
    fx = reference.case(reference.MAP_CASES, "19_random_small")
    gt, (video, start, end, label, score) = map_case(fx)
    keep = video < gt.num_videos - N_SILENT
    dets = (video, start, end, label, np.round(score, 2))
    return gt, tuple(c[keep] for c in dets)


def single_process_reference(gt: GroundTruth, dets: tuple[np.ndarray, ...]) -> dict[str, torch.Tensor]:
    metric = TemporalDetectionMAP(gt, THRESHOLDS)
    metric.update(*(torch.as_tensor(c) for c in dets))
    return metric.compute()


def make_module(gt: GroundTruth, dets: tuple[np.ndarray, ...], mode: str, out_dir: Path):
    import pytorch_lightning as pl

    class MetricOnly(pl.LightningModule):
        """Feeds precomputed detections of the videos in each test batch to the metric."""

        def __init__(self) -> None:
            super().__init__()
            self.metric = TemporalDetectionMAP(gt, THRESHOLDS)

        def test_dataloader(self) -> DataLoader:
            n = gt.num_videos
            if mode == "padded":  # an odd number of videos: Lightning's DistributedSampler repeats one
                return DataLoader(list(range(n - N_SILENT)), batch_size=2)
            # uneven shards: rank 0 gets every video with detections, rank 1 only the silent ones
            mine = list(range(n - N_SILENT)) if self.global_rank == 0 else list(range(n - N_SILENT, n))
            return DataLoader(mine, batch_size=3)

        def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            rows = np.isin(dets[0], batch.cpu().numpy())
            if rows.any():  # a batch without detections is simply not fed (rank 1 in "shards")
                self.metric.update(*(torch.as_tensor(c[rows]) for c in dets), videos=batch)

        def on_test_epoch_end(self) -> None:
            self.metric.sync()
            gathered = {
                "cov_video": self.metric.cov_video.clone(),
                "det_start": self.metric.det_start.clone(),
            }
            self.metric.unsync()
            result = self.metric.compute()
            torch.save({**result, **gathered}, out_dir / f"{mode}_rank{self.global_rank}.pt")
            self.metric.reset()

    return MetricOnly()


@pytest.mark.parametrize("mode", ["padded", "shards"])
def test_ddp_matches_single_process(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytorch_lightning as pl

    for var in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)  # a fresh free port for every run
    gt, dets = case()
    expected = single_process_reference(gt, dets)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        use_distributed_sampler=mode == "padded",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.test(make_module(gt, dets, mode, tmp_path))

    for rank in (0, 1):
        got = torch.load(tmp_path / f"{mode}_rank{rank}.pt", weights_only=True)
        for key in ("ap", "map", "map_avg", "tiou"):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, equal_nan=True)
        assert got["det_start"].dtype == torch.float64  # times travel as float64 through gloo
        covered = sorted(got["cov_video"].long().tolist())
        with_dets = list(range(gt.num_videos - N_SILENT))
        if mode == "padded":  # the sampler really evaluated a video twice
            assert len(with_dets) % 2 == 1 and covered == sorted([*with_dets, 0])
        else:  # rank 1 never updated: only rank 0's videos were gathered
            assert covered == with_dets
