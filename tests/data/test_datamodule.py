"""DataModule: padded batches with masks, deterministic length-bucketed batches, sampling, DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from issf.data.datamodule import BucketBatchSampler, FeatureDataModule, sample_indices
from issf.data.h5 import VideoEntry, write_feature_file


@pytest.fixture
def h5(tmp_path):
    rng = np.random.default_rng(0)
    videos = [
        VideoEntry(f"v{i}", "train" if i < 30 else "test", t * 0.64, rng.random((t, 6)).astype(np.float32),
                   np.eye(4, dtype=np.uint8)[i % 4])
        for i, t in enumerate(rng.integers(1, 120, size=40))
    ]
    return write_feature_file(tmp_path / "d.h5", videos, list("abcd"), snippet_seconds=0.64, feature_name="x"), videos


def test_padded_batches_hold_each_video_and_mask(h5):
    path, videos = h5
    dm = FeatureDataModule(str(path), batch_size=7, eval_batch_size=5)
    seen = set()
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert batch["features"].shape[:2] == batch["mask"].shape
            for b, idx in enumerate(batch["index"].tolist()):
                split = dm.train_indices if loader.dataset.indices is dm.train_indices else dm.test_indices
                video = videos[split[idx]]
                n = int(batch["lengths"][b])
                assert n == len(video.features) == int(batch["mask"][b].sum())
                torch.testing.assert_close(batch["features"][b, :n], torch.from_numpy(video.features))
                assert torch.all(batch["features"][b, n:] == 0)
                seen.add(video.video_id)
    assert seen == {v.video_id for v in videos}


def test_batches_are_deterministic_per_seed_and_epoch_and_bucketed():
    lengths = np.random.default_rng(1).integers(1, 500, size=200)
    s = BucketBatchSampler(lengths, 10, shuffle=True, seed=3)
    first = list(s)
    assert list(BucketBatchSampler(lengths, 10, shuffle=True, seed=3)) == first
    s.set_epoch(1)
    assert list(s) != first
    plain = BucketBatchSampler(lengths, 10, shuffle=True, seed=3, bucket=False)
    padding = lambda batches: sum(max(lengths[i] for i, _ in b) * len(b) - sum(lengths[i] for i, _ in b) for b in batches)  # noqa: E731
    assert padding(first) < 0.5 * padding(list(plain))
    assert sorted(i for b in first for i, _ in b) == list(range(200))


def test_ddp_shards_cover_train_with_equal_counts_and_eval_without_duplicates(monkeypatch):
    lengths = np.arange(1, 24)
    import issf.data.datamodule as dmod

    shards = {}
    for rank in (0, 1):
        monkeypatch.setattr(dmod, "_dist_info", lambda r=rank: (r, 2))
        shards[rank] = (list(BucketBatchSampler(lengths, 4, shuffle=True, seed=0)),
                        list(BucketBatchSampler(lengths, 4, shuffle=False)))
    assert len(shards[0][0]) == len(shards[1][0])
    train = {i for r in (0, 1) for b in shards[r][0] for i, _ in b}
    assert train == set(range(23))
    evals = [i for r in (0, 1) for b in shards[r][1] for i, _ in b]
    assert sorted(evals) == list(range(23))


def test_sampling_random_for_training_uniform_for_test():
    rng = np.random.default_rng(0)
    idx = sample_indices(1000, 75, rng)
    assert len(idx) == 75 and np.all(np.diff(idx) > 0) and idx.max() < 1000
    assert not np.array_equal(idx, sample_indices(1000, 75, np.random.default_rng(1)))
    np.testing.assert_array_equal(sample_indices(1000, 75, None), np.floor(np.arange(75) * 1000 / 75))
    np.testing.assert_array_equal(sample_indices(40, 75, None), np.arange(40))
    short = sample_indices(10, 75, rng)
    assert len(short) == 75 and short.max() <= 9


def test_sampled_training_is_deterministic_per_epoch_and_changes_between_epochs(h5):
    path, videos = h5
    dm = FeatureDataModule(str(path), batch_size=4, train_sample_length=16, seed=5)

    def sampled(epoch: int) -> dict[int, torch.Tensor]:
        loader = dm.train_dataloader()
        loader.batch_sampler.set_epoch(epoch)  # what Lightning calls at the start of every epoch
        out = {}
        for batch in loader:
            assert batch["features"].shape[1] == 16
            out.update({int(i): batch["features"][j] for j, i in enumerate(batch["index"])})
        return out

    first, again, second = sampled(0), sampled(0), sampled(1)
    assert set(first) == set(second) == set(range(len(dm.train_indices)))
    assert all(torch.equal(first[i], again[i]) for i in first)  # same seed and epoch: same snippets
    # a video of >= 48 snippets has >= 3 candidates in each of its 16 strata: a new epoch draws anew
    long = [i for i in first if len(videos[dm.train_indices[i]].features) >= 48]
    assert len(long) >= 10
    assert all(not torch.equal(first[i], second[i]) for i in long)
    third = sampled(1)
    assert all(torch.equal(third[i], second[i]) for i in second)


def test_missing_file_error_gives_the_prepare_command(tmp_path):
    dm = FeatureDataModule(str(tmp_path / "nope.h5"), prepare_hint="python run.py task=prepare data=thumos14")
    with pytest.raises(FileNotFoundError, match="task=prepare data=thumos14"):
        dm.setup()


def test_validation_split_is_carved_from_train(h5):
    path, _ = h5
    dm = FeatureDataModule(str(path), val_fraction=0.2, seed=1)
    dm.setup()
    assert len(dm.val_indices) == 6 and not set(dm.val_indices) & set(dm.train_indices)
    assert len(dm.train_indices) == 24
    assert dm.ground_truth("val").num_videos == 6


def test_uniform_test_sampling_reports_the_time_scale(h5):
    path, videos = h5
    dm = FeatureDataModule(str(path), eval_batch_size=4, test_sample_length=16)
    for batch in dm.test_dataloader():
        for b, idx in enumerate(batch["index"].tolist()):
            original = len(videos[dm.test_indices[idx]].features)
            assert int(batch["lengths"][b]) == min(original, 16)
            assert float(batch["scale"][b]) == pytest.approx(original / min(original, 16))
