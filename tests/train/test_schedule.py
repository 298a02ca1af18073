"""Training schedule (ISSF_SPEC.md 1.2, 2.6): memory initialisation and start, the pseudo-label
weight switch, the EMA coefficient and its start, and the summed batch loss; the values are worked
out by hand here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from issf.data.datamodule import FeatureDataModule
from issf.data.h5 import VideoEntry, write_feature_file
from issf.model.config import ISSFConfig
from issf.model.memory import SalientMemory, ema_momentum
from issf.model.network import ISSF
from tests.conftest import padded_batch

DIM, C = 8, 3


# ---------------------------------------------------------------- EMA
@pytest.mark.parametrize("epoch, schedule, expected", [
    (0, 180, 0.34657359027997264),  # 0.5 ln 2
    (85, 180, 0.47843865770849087),  # 0.5 ln(e^(85/180) + 1), the first official EMA epoch is 86
    (86, 180, 0.48015134224638645),
    (180, 180, 0.6566308437591114),  # 0.5 ln(e + 1)
    (6, 10, 0.5 * math.log(math.exp(0.6) + 1.0)),
])
def test_ema_momentum_hand_values(epoch, schedule, expected):
    assert ema_momentum(epoch, schedule) == pytest.approx(expected, rel=1e-12)


def memory_with_two_slots() -> SalientMemory:
    mem = SalientMemory(num_classes=2, slots=2, dim=2, ema_epoch=5, schedule_epochs=10)
    mem.slots[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mem.scores[0] = torch.tensor([0.9, 0.8])
    return mem


CANDIDATES = torch.tensor([[4.0, 4.0], [2.0, 2.0]])
CANDIDATE_SCORES = torch.tensor([[0.95, 0.5, 0.0], [0.1, 0.5, 0.0]])  # class-0 scores 0.95 and 0.1


def test_memory_update_until_the_ema_epoch_is_plain_top_n_replacement():
    mem = memory_with_two_slots()
    mem.update(CANDIDATES, CANDIDATE_SCORES, classes=[0], epoch=5)  # epoch index == ema_epoch: no EMA yet
    # pool scores 0.9, 0.8, 0.95, 0.1 -> keep 0.95 (candidate 0) and 0.9 (old slot 0)
    assert torch.equal(mem.slots[0], torch.tensor([[4.0, 4.0], [1.0, 0.0]]))
    assert torch.equal(mem.scores[0], torch.tensor([0.95, 0.9]))
    assert torch.all(mem.slots[1] == 0) and torch.all(mem.scores[1] == 0)


def test_memory_update_after_the_ema_epoch_blends_rank_aligned_slots():
    mem = memory_with_two_slots()
    mem.update(CANDIDATES, CANDIDATE_SCORES, classes=[0], epoch=6)
    m = 0.5 * math.log(math.exp(6 / 10) + 1.0)  # 0.5 ln(e^(t/E) + 1)
    expected = torch.tensor([[m * 1.0 + (1 - m) * 4.0, (1 - m) * 4.0],
                             [m * 0.0 + (1 - m) * 1.0, m * 1.0]])
    torch.testing.assert_close(mem.slots[0], expected)
    assert torch.equal(mem.scores[0], torch.tensor([0.95, 0.9]))


# ---------------------------------------------------------------- memory start and the w_pl switch
def make_net(**kw) -> ISSF:
    torch.manual_seed(0)
    return ISSF(ISSFConfig(input_dim=DIM, embed_dim=DIM, num_classes=C, dropout=0.0, scale=5.0, **kw)).eval()


def test_memory_starts_the_epoch_after_its_initialisation():
    assert ISSFConfig().memory_init_epoch == 1 and ISSFConfig().memory_start_epoch == 2
    assert ISSFConfig(memory_init_epoch=4).memory_start_epoch == 5
    net = make_net()
    assert [net.memory_active(e) for e in range(4)] == [False] * 4  # not initialised
    net.memory.initialized.fill_(True)
    assert [net.memory_active(e) for e in range(4)] == [False, False, True, True]
    assert not make_net(memory=False).memory_active(5)


def pl_weight(net: ISSF, epoch: int) -> float:
    """The weight of the pseudo-label term in the total loss, read off the loss terms."""
    x, mask = padded_batch([9, 14], DIM, seed=2)
    y = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    terms, _ = net.losses(x, mask, y, epoch, update_memory=False)
    rest = terms["fg"] + 0.2 * terms["bg"] + 0.1 * terms["att"]
    weights = (terms["total"] - rest) / terms["pl"]
    assert torch.allclose(weights, weights[0], atol=1e-4)
    return float(weights[0])


def test_pseudo_label_weight_is_1_then_05_from_the_memory_start():
    net = make_net()
    assert pl_weight(net, 0) == pytest.approx(1.0, abs=1e-4)
    assert pl_weight(net, 1) == pytest.approx(1.0, abs=1e-4)
    assert pl_weight(net, 2) == pytest.approx(0.5, abs=1e-4)  # from epoch 2 on, memory initialised or not
    net.memory.initialized.fill_(True)
    net.memory.slots.normal_()
    assert pl_weight(net, 2) == pytest.approx(0.5, abs=1e-4)
    assert pl_weight(net, 40) == pytest.approx(0.5, abs=1e-4)
    # without the memory, epochs >= 2 behave like epochs 0-1 (ISSF_SPEC.md 4.5)
    assert pl_weight(make_net(memory=False), 5) == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- the schedule inside a Lightning run
def tiny_file(path) -> str:
    rng = np.random.default_rng(0)
    videos = [VideoEntry(f"v{i}", "train" if i < 10 else "test", 20 * 0.64,
                         rng.random((int(rng.integers(6, 20)), 6)).astype(np.float32), np.eye(C, dtype=np.uint8)[i % C],
                         np.array([[1.0, 3.0]]), np.array([i % C]))
              for i in range(13)]
    return str(write_feature_file(path, videos, list("abc"), snippet_seconds=0.64, feature_name="x"))


class ScheduleProbe(pl.Callback):
    """Records, per training epoch, the memory reads of the training steps, the initialisation
    passes (and whether the network was in eval mode then), and the batch losses."""

    def __init__(self):
        self.reads: dict[int, int] = {}
        self.inits: dict[int, list[bool]] = {}
        self.initialized_at_start: dict[int, bool] = {}
        self.losses: list[tuple[float, float]] = []

    def setup(self, trainer, pl_module, stage):
        net = pl_module.net
        branch, insert, losses = net.memory_branch, net.insert_into_memory, net.losses

        def counting_branch(*args, **kwargs):
            if net.training:
                self.reads[trainer.current_epoch] = self.reads.get(trainer.current_epoch, 0) + 1
            return branch(*args, **kwargs)

        def recording_insert(*args, **kwargs):
            self.inits.setdefault(trainer.current_epoch, []).append(net.training)
            return insert(*args, **kwargs)

        def recording_losses(*args, **kwargs):
            terms, out = losses(*args, **kwargs)
            self._total = terms["total"].detach().clone()
            return terms, out

        net.memory_branch, net.insert_into_memory, net.losses = counting_branch, recording_insert, recording_losses

    def on_train_epoch_start(self, trainer, pl_module):
        self.initialized_at_start[trainer.current_epoch] = bool(pl_module.net.memory.initialized)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append((float(outputs["loss"]), float(self._total.sum()), float(self._total.mean())))


def test_memory_initialised_after_epoch_1_in_eval_mode_and_read_from_epoch_2(tmp_path):
    from issf.train.module import ISSFModule

    dm = FeatureDataModule(tiny_file(tmp_path / "tiny.h5"), batch_size=4, eval_batch_size=4)
    module = ISSFModule(num_classes=C, input_dim=6, network={"embed_dim": DIM, "dropout": 0.5},
                        optimizer={"lr": 1e-3})
    probe = ScheduleProbe()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[probe])
    trainer.fit(module, datamodule=dm)
    batches = 3  # 10 training videos in batches of 4
    assert probe.initialized_at_start == {0: False, 1: False, 2: True, 3: True}
    assert list(probe.inits) == [1]  # one pass, at the end of epoch index 1 ...
    assert len(probe.inits[1]) == 3 and not any(probe.inits[1])  # ... over all 10 videos, in eval mode
    assert probe.reads == {2: batches, 3: batches}  # every training step from epoch 2 on reads the memory
    assert module.net.memory.scores.sum() > 0
    # the batch loss is the SUM of the per-video losses
    assert len(probe.losses) == 4 * batches
    for returned, total_sum, total_mean in probe.losses:
        assert returned == pytest.approx(total_sum, rel=1e-6)
        assert abs(returned - total_mean) > 1e-3
