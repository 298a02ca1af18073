"""The previous checkpoint survives a write that fails or is interrupted: ``last.ckpt`` is replaced
only by a complete new file, and the project's trainer writes every checkpoint that way."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from issf.train.checkpoints import AtomicCheckpointIO, read_checkpoint
from issf.utils.io import TMP_MARK
from tests.conftest import compose_cfg
from tests.reference import ROOT


def checkpoint(epoch: int) -> dict:
    return {"epoch": epoch, "state_dict": {"w": torch.full((64, 64), float(epoch))}, "hyper_parameters": {},
            "pytorch-lightning_version": "2"}


def assert_is_epoch(path, epoch: int) -> None:
    loaded = read_checkpoint(path)
    assert loaded["epoch"] == epoch and torch.equal(loaded["state_dict"]["w"], checkpoint(epoch)["state_dict"]["w"])


def failing_save(exc: BaseException):
    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes of a new checkpoint")
        f.flush()
        raise exc
    return save


@pytest.mark.parametrize("exc", [RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
                                 OSError(28, "No space left on device")])
def test_the_previous_last_checkpoint_survives_a_failed_write(tmp_path, monkeypatch, exc):
    last = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(3), last)
    monkeypatch.setattr(torch, "save", failing_save(exc))
    with pytest.raises(OSError, match="could not write checkpoint"):
        io.save_checkpoint(checkpoint(4), last)
    monkeypatch.undo()
    assert_is_epoch(last, 3)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_the_previous_last_checkpoint_survives_an_interrupt_and_leaves_no_temporary(tmp_path, monkeypatch):
    last = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(1), last)
    monkeypatch.setattr(torch, "save", failing_save(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(checkpoint(2), last)
    monkeypatch.undo()
    assert_is_epoch(last, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_previous_last_checkpoint_survives_a_kill_during_the_write(tmp_path):
    last = tmp_path / "last.ckpt"
    script = (
        "import os, signal, sys, torch\n"
        "from issf.train.checkpoints import AtomicCheckpointIO\n"
        "def checkpoint(e):\n"
        "    return {'epoch': e, 'state_dict': {'w': torch.full((64, 64), float(e))}, 'hyper_parameters': {},\n"
        "            'pytorch-lightning_version': '2'}\n"
        "io = AtomicCheckpointIO()\n"
        "io.save_checkpoint(checkpoint(5), sys.argv[1])\n"
        "def killed(obj, f, *a, **k):\n"
        "    f.write(b'PK\\x03\\x04 partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = killed\n"
        "io.save_checkpoint(checkpoint(6), sys.argv[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(last)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert_is_epoch(last, 5)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert all(TMP_MARK in name and name.startswith(".last.ckpt") for name in leftovers), leftovers


def test_the_trainer_writes_checkpoints_through_the_atomic_plugin(tmp_path, monkeypatch):
    from issf.app import build

    trainer = build.build_trainer(compose_cfg(tmp_path, "experiment=smoke", "logger=none"))
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO)
    last = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(7), last)
    monkeypatch.setattr(torch, "save", failing_save(RuntimeError("file write failed")))
    with pytest.raises(OSError):
        io.save_checkpoint(checkpoint(8), last)
    monkeypatch.undo()
    assert_is_epoch(last, 7)
