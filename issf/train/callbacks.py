"""Callbacks: RNG state in checkpoints, so that a resumed run continues the same random streams."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


class RNGStateCallback(pl.Callback):
    """Stores torch (CPU and CUDA), numpy and Python RNG states as tensors / plain scalars, which
    load with ``torch.load(weights_only=True)``, and restores them on resume."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "numpy_gauss": [int(np_state[3]), float(np_state[4])],
            "python": _python_state_to_list(random.getstate()),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(
            ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
             state["numpy_gauss"][0], state["numpy_gauss"][1])
        )
        random.setstate(_python_state_from_list(state["python"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(state["cuda"]))


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


class RunModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose best-checkpoint tracking survives a resume into another run
    directory: Lightning's restores the best score and paths only when ``dirpath`` is unchanged,
    so a run resumed elsewhere would forget its best epoch and report a worse "best" checkpoint.
    (Files outside ``dirpath`` are never deleted by Lightning, so the old run's stay.)"""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})


class LogHistoryOnResume(pl.Callback):
    """At the start of training, cut each resumable log's history back to the epoch training starts
    from: a resumed run re-logs the epoch it was killed in, a fresh run starts a new history."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if hasattr(logger, "keep_epochs_before"):
                logger.keep_epochs_before(trainer.current_epoch, step=trainer.global_step)
