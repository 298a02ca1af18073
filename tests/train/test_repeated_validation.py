"""The LightningModule's second validation of a run scores that validation alone (evaluators and
the classification mAP are reset between validations), with the network in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from issf.data.datamodule import FeatureDataModule
from issf.data.h5 import VideoEntry, write_feature_file
from issf.train.module import ISSFModule

C = 3
SNIPPET = 0.5


def oracle_file(path):
    """Videos whose features are the per-snippet one-hot ground truth."""
    rng = np.random.default_rng(4)
    videos = []
    for i in range(8):
        t = int(rng.integers(40, 70))
        feats = np.zeros((t, C), np.float32)
        segments, labels = [], []
        start = int(rng.integers(0, 6))
        while start + 10 < t:
            length, c = int(rng.integers(4, 9)), int(rng.integers(0, C))
            feats[start: start + length, c] = 1.0
            segments.append([start * SNIPPET, (start + length) * SNIPPET])
            labels.append(c)
            start += length + int(rng.integers(3, 10))
        videos.append(VideoEntry(f"v{i}", "test" if i % 2 else "train", t * SNIPPET, feats,
                                 np.eye(C, dtype=np.uint8)[labels].max(0), np.array(segments), np.array(labels)))
    return write_feature_file(path, videos, list("abc"), snippet_seconds=SNIPPET, feature_name="oracle")


def oracle(x, mask):
    return x.amax(1), x * mask[..., None]


def wrong(x, mask):
    """Every class's evidence moved to the next class and shifted in time."""
    shifted = torch.roll(x, shifts=(5, 1), dims=(1, 2)) * mask[..., None]
    return 0.5 * shifted.amax(1) + 0.2, shifted


class Record(pl.Callback):
    def __init__(self):
        self.results = []

    def on_validation_end(self, trainer, pl_module):
        result = pl_module.evaluation_results["val"]
        self.results.append((result.summary, result.per_class, len(result.detections)))


def make_module(predictions, modes):
    torch.manual_seed(0)
    module = ISSFModule(num_classes=C, input_dim=C, network={"embed_dim": 8, "dropout": 0.5, "memory": False},
                        evaluation={"protocol": "anet", "filter_ambiguous": False})

    def predict(x, mask):
        modes.append(module.net.training)
        return (*predictions(module)(x, mask), None)

    module.net.predict = predict
    return module


def trainer(tmp_path, callbacks=(), **kwargs):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path, callbacks=list(callbacks), **kwargs)


def test_the_second_validation_reflects_only_the_second_predictions(tmp_path):
    dm = FeatureDataModule(str(oracle_file(tmp_path / "oracle.h5")), batch_size=2, eval_batch_size=2)
    modes: list[bool] = []
    module = make_module(lambda m: oracle if m.current_epoch == 0 else wrong, modes)
    record = Record()
    trainer(tmp_path, [record], max_epochs=2, check_val_every_n_epoch=1, limit_train_batches=1).fit(module, dm)
    assert len(record.results) == 2
    first, second = record.results
    assert first[0]["mAP@0.5"] == pytest.approx(100.0) and first[0]["cls_mAP"] == pytest.approx(100.0)

    # the same poor predictions, validated by a module that never saw the oracle's
    alone = make_module(lambda m: wrong, modes)
    alone_record = Record()
    trainer(tmp_path / "alone", [alone_record]).validate(alone, dm, verbose=False)
    expected = alone_record.results[0]
    assert expected[0]["AVG"] < 50.0 and expected[0]["cls_mAP"] < 100.0
    assert second[0] == pytest.approx(expected[0])
    assert second[1] == pytest.approx(expected[1]) and second[2] == expected[2]
    assert modes and not any(modes)  # every evaluation in eval mode
