"""The validation split (``val_fraction``) is a function of the file and the seed alone: not of the
global random state (which Lightning seeds, resumes restore and every rank advances differently),
not of the instance, and it holds out disjoint videos from training."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from issf.data.datamodule import FeatureDataModule
from issf.data.h5 import VideoEntry, write_feature_file

N_TRAIN = 20


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("split") / "f.h5"
    videos = [VideoEntry(f"v{i}", "train" if i % 6 else "test", 6.4, np.full((10, 3), float(i), np.float32),
                         np.eye(2, dtype=np.uint8)[i % 2]) for i in range(N_TRAIN + 5)]
    write_feature_file(path, videos, ["a", "b"], snippet_seconds=0.64, feature_name="x")
    return str(path)


def split(path: str, seed: int, fraction: float = 0.25) -> tuple[list[int], list[int]]:
    dm = FeatureDataModule(path, val_fraction=fraction, seed=seed)
    dm.setup()
    return dm.val_indices.tolist(), dm.train_indices.tolist()


def disturb_global_rngs(seed: int) -> None:
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.random(seed % 7 + 1)


def test_the_split_does_not_depend_on_the_global_random_state(feature_file):
    splits = []
    for global_seed in (0, 1, 12345):
        disturb_global_rngs(global_seed)
        splits.append(split(feature_file, seed=3))
    assert splits[0] == splits[1] == splits[2]
    assert split(feature_file, seed=3) == splits[0]  # and not of how many splits were drawn before


def test_the_seed_chooses_the_split(feature_file):
    held_out = {tuple(split(feature_file, seed)[0]) for seed in range(6)}
    assert len(held_out) >= 5  # another seed, another split (not one fixed permutation)


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5])
def test_validation_videos_are_held_out_from_training(feature_file, fraction):
    val, train = split(feature_file, seed=1, fraction=fraction)
    dm = FeatureDataModule(feature_file)
    dm.setup()
    everything = dm.train_indices.tolist()
    assert len(everything) == N_TRAIN and len(val) == max(1, round(fraction * N_TRAIN))
    assert not set(val) & set(train) and sorted(val + train) == everything
    assert train == sorted(train) and val == sorted(val)  # file order within each part
    assert not set(val) & set(dm.test_indices.tolist())


def test_validation_ground_truth_and_batches_are_the_held_out_videos(feature_file):
    dm = FeatureDataModule(feature_file, val_fraction=0.25, seed=2, eval_batch_size=4)
    dm.setup()
    assert dm.val_split == "val"
    gt = dm.ground_truth("val")
    assert gt.video_ids == [f"v{i}" for i in dm.val_indices]
    selection, curve = dm.val_dataloader()
    seen = sorted(int(v) for batch in selection for v in batch["features"][:, 0, 0])
    assert seen == sorted(dm.val_indices.tolist())
    trained = sorted(int(v) for batch in dm.train_dataloader() for v in batch["features"][:, 0, 0])
    assert trained == sorted(dm.train_indices.tolist())
    assert sorted(int(v) for batch in curve for v in batch["features"][:, 0, 0]) == dm.test_indices.tolist()
