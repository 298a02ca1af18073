"""Streaming LightningDataModule over a feature file: padded batches with masks.

Batches are formed by a deterministic, length-bucketed batch sampler that also shards batches
across DDP ranks itself (so Lightning's sampler replacement is switched off:
``Trainer(use_distributed_sampler=False)``). Each index it yields carries a per-epoch sampling
seed, so temporal sampling is deterministic whatever the number of DataLoader workers.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from issf.data.annotations import GroundTruth
from issf.data.h5 import FeatureFile

log = logging.getLogger(__name__)


def sample_indices(length: int, target: int, rng: np.random.Generator | None) -> np.ndarray:
    """Snippet indices that resample a video of ``length`` to ``target`` snippets.

    With ``rng``: random perturbation within ``target`` equal strata (training, ACM-Net practice;
    shorter videos are stretched by repetition). Without: uniform down-sampling, or all snippets
    when the video is not longer than ``target`` (testing).
    """
    if rng is None:
        if length <= target:
            return np.arange(length)
        return np.floor(np.arange(target) * length / target).astype(np.int64)
    edges = np.arange(target + 1) * length / target
    low = np.floor(edges[:-1]).astype(np.int64)
    high = np.maximum(np.ceil(edges[1:]).astype(np.int64), low + 1)
    return np.minimum(low + np.floor(rng.random(target) * (high - low)).astype(np.int64), length - 1)


class VideoDataset(Dataset):
    """Videos of one split; item key is (position in split, sampling seed or -1)."""

    def __init__(self, file: FeatureFile, indices: np.ndarray, sample_length: int | None = None):
        self.file = file
        self.indices = np.asarray(indices)
        self.sample_length = sample_length
        self.lengths = file.lengths[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        position, seed = key
        features = self.file.features(int(self.indices[position]))
        original_length = len(features)
        if self.sample_length:
            rng = np.random.default_rng(seed) if seed >= 0 else None
            features = features[sample_indices(len(features), self.sample_length, rng)]
        return {
            "features": torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
            "original_length": original_length,
            "labels": torch.from_numpy(self.file.labels[self.indices[position]].astype(np.float32)),
            "index": position,
        }


def collate_videos(items: Sequence[dict]) -> dict:
    """Right-pad to the longest video; ``mask`` marks valid snippets."""
    lengths = torch.tensor([len(it["features"]) for it in items])
    dim = items[0]["features"].shape[1]
    features = torch.zeros(len(items), int(lengths.max()), dim)
    for i, it in enumerate(items):
        features[i, : len(it["features"])] = it["features"]
    return {
        "features": features,
        "mask": torch.arange(features.shape[1])[None] < lengths[:, None],
        "lengths": lengths,
        # snippets per sampled position (uniform test sampling maps position i to [i, i+1) * scale)
        "scale": torch.tensor([it["original_length"] / len(it["features"]) for it in items], dtype=torch.float64),
        "labels": torch.stack([it["labels"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
        # host copies, read before the batch moves to a device: the training step needs no host
        # synchronisation to learn them (docs/framework.md, "Host synchronisations")
        "host_lengths": tuple(int(n) for n in lengths),
        "host_classes": [np.flatnonzero(it["labels"].numpy() > 0).tolist() for it in items],
    }


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """Deterministic batches of similar length, sharded over DDP ranks.

    Training (``shuffle``): each epoch (seeded with ``seed`` and the epoch) the videos are sorted by
    their log-length plus a random jitter of +-``jitter``, cut into batches and the batches
    shuffled: batch members have similar lengths (little padding) yet change from epoch to epoch.
    Every rank gets the same number of batches (the last ones wrap around). With ``bucket=False``
    batches are plain random, as the official loader. Evaluation: batches of length-sorted videos,
    distributed without duplicates (ranks may get different counts).
    """

    def __init__(
        self, lengths: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0, bucket: bool = True,
        jitter: float = 0.1, sample: bool = False, drop_last: bool = False,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket = bucket
        self.jitter = jitter
        self.sample = sample
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if self.bucket:
            key = np.log(np.maximum(self.lengths[order], 1)) + rng.uniform(-self.jitter, self.jitter, n)
            order = order[np.argsort(key, kind="stable")]
        batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        if self.bucket:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _shard(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        rank, world = _dist_info()
        if world == 1:
            return batches
        if self.shuffle:
            per_rank = math.ceil(len(batches) / world)
            batches = [batches[i % len(batches)] for i in range(per_rank * world)]
            return batches[rank::world]
        order = np.argsort(self.lengths, kind="stable")[rank::world]
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._shard(self._batches()):
            seeds = (
                np.random.default_rng([self.seed, self.epoch, 7]).integers(0, 2**31, len(self.lengths))
                if self.sample and self.shuffle else None
            )
            yield [(int(i), int(seeds[i]) if seeds is not None else -1) for i in batch]

    def __len__(self) -> int:
        return len(self._shard(self._batches()))


def check_datamodule_settings(
    batch_size: int, eval_batch_size: int, val_fraction: float, train_sample_length: int | None,
    test_sample_length: int | None, num_workers: int = 0, **_: object,
) -> None:
    """Raise ``ValueError`` naming the ``data.datamodule.*`` key and its range for a value that
    cannot give training batches (checked before any data is generated; the settings that depend on
    the file, subsets and the split's size, are checked by :meth:`FeatureDataModule.setup`)."""
    key = "data.datamodule."
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}{name}: must be an integer >= 1, got {value!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"{key}val_fraction: must be in [0, 1) (and leave at least one training video), "
                         f"got {val_fraction!r}")
    for name, value in (("train_sample_length", train_sample_length), ("test_sample_length", test_sample_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key}{name}: must be null (full-length videos) or an integer >= 1, got {value!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"{key}num_workers: must be an integer >= 0, got {num_workers!r}")


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset`` or a Slurm
    allocation; the machine's count where the platform has no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def capped_workers(num_workers: int) -> int:
    """``num_workers`` capped at the available cores: more worker processes than cores only
    compete for them (and make torch warn about it at every loader)."""
    cpus = available_cpus()
    if num_workers > cpus:
        log.info(f"data.datamodule.num_workers={num_workers} capped at {cpus}, the CPU cores available")
        return cpus
    return num_workers


class FeatureDataModule(pl.LightningDataModule):
    """Train/test loaders over one feature file; optional validation split carved from train."""

    def __init__(
        self,
        path: str,
        train_subsets: Sequence[str] = ("train",),
        test_subsets: Sequence[str] = ("test",),
        val_fraction: float = 0.0,
        batch_size: int = 10,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        bucket: bool = True,
        train_sample_length: int | None = None,
        test_sample_length: int | None = None,
        seed: int = 0,
        prepare_hint: str | None = None,
    ):
        super().__init__()
        check_datamodule_settings(batch_size, eval_batch_size, val_fraction, train_sample_length,
                                  test_sample_length, num_workers)
        self.path = path
        self.train_subsets = list(train_subsets)
        self.test_subsets = list(test_subsets)
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = capped_workers(num_workers)
        self.bucket = bucket
        self.train_sample_length = train_sample_length
        self.test_sample_length = test_sample_length
        self.seed = seed
        self.prepare_hint = prepare_hint
        self.file: FeatureFile | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.file is not None:
            return
        try:
            self.file = FeatureFile(self.path)
        except FileNotFoundError as err:
            hint = f"\nCreate it with:\n  {self.prepare_hint}" if self.prepare_hint else ""
            raise FileNotFoundError(f"data.datamodule.path: {err}{hint}") from None
        self._check_subsets()
        train = self.file.indices(self.train_subsets)
        if len(train) == 0:
            raise ValueError(f"{self.path}: no videos in subsets {self.train_subsets}")
        self.val_indices = np.zeros(0, dtype=np.int64)
        if self.val_fraction > 0:
            rng = np.random.default_rng([self.seed, 11])
            chosen = np.zeros(len(train), dtype=bool)
            chosen[rng.permutation(len(train))[: max(1, round(self.val_fraction * len(train)))]] = True
            if chosen.all():
                raise ValueError(
                    f"data.datamodule.val_fraction: {self.val_fraction} holds out all {len(train)} training videos of "
                    f"{self.path} (subsets {self.train_subsets}); it must leave at least one: use a value below "
                    f"{(len(train) - 0.5) / len(train):.3g}")
            self.val_indices, train = train[chosen], train[~chosen]
        self.train_indices = train
        self.test_indices = self.file.indices(self.test_subsets)

    def _check_subsets(self) -> None:
        """Every configured subset must be in the file (a mistyped ``test_subsets`` stops here, before
        fitting, instead of after the whole training)."""
        present = sorted(set(self.file.subsets.tolist()))
        for name, subsets in (("train_subsets", self.train_subsets), ("test_subsets", self.test_subsets)):
            missing = [s for s in subsets if s not in present]
            if missing or not subsets:
                raise ValueError(f"data.datamodule.{name}: {missing or subsets} not in {self.path}; "
                                 f"its subsets are {present}")

    # ----------------------------------------------------------------- metadata
    @property
    def class_names(self) -> list[str]:
        self.setup()
        return self.file.class_names

    @property
    def feature_dim(self) -> int:
        self.setup()
        return self.file.feature_dim

    @property
    def snippet_seconds(self) -> float:
        self.setup()
        return self.file.snippet_seconds

    def ground_truth(self, split: str) -> GroundTruth:
        """Annotations of a split ("train", "val", "test"), indexed like the split's dataset."""
        self.setup()
        full = self.file.ground_truth(None)
        return full.subset(self._indices(split))

    def _indices(self, split: str) -> np.ndarray:
        return {"train": self.train_indices, "val": self.val_indices, "test": self.test_indices}[split]

    # ----------------------------------------------------------------- loaders
    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        self.setup()
        sample = self.train_sample_length if split == "train" else self.test_sample_length
        dataset = VideoDataset(self.file, self._indices(split), sample)
        sampler = BucketBatchSampler(
            dataset.lengths, batch_size, shuffle=shuffle, seed=self.seed, bucket=self.bucket,
            sample=bool(sample),
        )
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate_videos, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # Lightning's overfit_batches needs the same batches every epoch (it stops shuffling only
        # for samplers it knows)
        overfit = self.trainer is not None and self.trainer.overfit_batches > 0
        loader = self._loader("train", not overfit, self.batch_size)
        if len(loader.batch_sampler) == 0:
            raise ValueError(f"{self.path}: no training batch (subsets {self.train_subsets}, "
                             f"val_fraction {self.val_fraction}, batch_size {self.batch_size})")
        return loader

    def memory_init_dataloader(self) -> DataLoader:
        """Training videos in a fixed order, unsampled beyond the test rule (memory initialisation)."""
        self.setup()
        dataset = VideoDataset(self.file, self.train_indices, self.test_sample_length)
        batches = [[(i, -1) for i in range(s, min(s + self.eval_batch_size, len(dataset)))]
                   for s in range(0, len(dataset), self.eval_batch_size)]
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_videos, num_workers=0)

    @property
    def val_split(self) -> str:
        """The split the best checkpoint is selected on: the validation videos held out from the
        training split if any (``val_fraction > 0``), else the test split (as the official code,
        which selects its best epoch on the test set)."""
        self.setup()
        return "val" if len(self.val_indices) else "test"

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The selection split; with held-out validation videos also the test split, evaluated for
        its curve only (never for selection)."""
        selection = self._loader(self.val_split, False, self.eval_batch_size)
        if self.val_split == "test":
            return selection
        return [selection, self._loader("test", False, self.eval_batch_size)]

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def teardown(self, stage: str | None = None) -> None:
        if self.file is not None:
            self.file.close()
