"""Data-loader settings that depend on the machine or the trainer: worker processes capped at the
CPU cores available, and fixed training batches under Lightning's overfit_batches."""

from __future__ import annotations

import logging
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from issf.data.datamodule import FeatureDataModule
from issf.data.h5 import VideoEntry, write_feature_file


@pytest.fixture
def feature_file(tmp_path):
    entries = [VideoEntry(f"v{i}", "train" if i < 12 else "test", 6.4, np.full((5 + i, 3), float(i), np.float32),
                          np.array([1, 0], np.uint8), np.array([[0.0, 3.0]]), np.array([0])) for i in range(16)]
    return write_feature_file(tmp_path / "f.h5", entries, ["a", "b"], snippet_seconds=0.64, feature_name="x")


def test_workers_are_capped_at_the_cores_this_process_may_use(feature_file, monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.INFO, logger="issf.data.datamodule"):
        dm = FeatureDataModule(str(feature_file), num_workers=4)
    assert dm.num_workers == 2
    assert [r.getMessage() for r in caplog.records] == [
        "data.datamodule.num_workers=4 capped at 2, the CPU cores available"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about more workers than cores when it builds a loader
        loader = dm.train_dataloader()
    assert loader.num_workers == 2
    caplog.clear()
    assert FeatureDataModule(str(feature_file), num_workers=1).num_workers == 1 and not caplog.records


def test_without_an_affinity_mask_the_machines_cores_count(feature_file, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert FeatureDataModule(str(feature_file), num_workers=8).num_workers == 3


def epoch_batches(dm: FeatureDataModule, epoch: int) -> list[list[int]]:
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    return [[i for i, _ in batch] for batch in loader.batch_sampler]


def test_overfit_batches_get_the_same_training_batches_every_epoch(feature_file):
    dm = FeatureDataModule(str(feature_file), batch_size=4)
    dm.trainer = SimpleNamespace(overfit_batches=0)
    assert epoch_batches(dm, 0) != epoch_batches(dm, 1)  # shuffled
    dm.trainer = SimpleNamespace(overfit_batches=2)
    assert epoch_batches(dm, 0) == epoch_batches(dm, 1) == epoch_batches(dm, 5)
    assert sorted(i for batch in epoch_batches(dm, 0) for i in batch) == list(range(12))
