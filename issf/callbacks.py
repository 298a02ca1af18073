"""Callbacks: RNG state in checkpoints, so that a resumed run continues the same random streams."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


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
