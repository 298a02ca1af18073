"""Skip markers for tests that need a GPU or an optional extra, so that the suite passes on a machine
without them and says what it skipped (``pytest -ra``); each also sets a named marker
(``gpu``, ``extra``, registered in pyproject.toml) to select or leave out such tests
(``pytest -m gpu``, ``pytest -m "not extra"``).

    @requires_gpu
    def test_on_cuda(): ...

    @requires_package("wandb")
    def test_offline_run(): ...
"""

from __future__ import annotations

import importlib.util
from typing import TypeVar

import pytest
import torch

T = TypeVar("T")

# the extra of pyproject.toml that installs each optional package the tests use
EXTRAS = {"wandb": "wandb", "tensorboard": "tensorboard", "optuna": "hpo",
          "hydra_plugins.hydra_submitit_launcher": "slurm", "hydra_plugins.hydra_joblib_launcher": "slurm"}


class Marks(list):
    """Marks applied together: a test decorator, or a module's ``pytestmark``."""

    def __call__(self, test: T) -> T:
        for mark in self:
            test = mark(test)
        return test


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


requires_gpu = Marks([pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])


def requires_package(*packages: str) -> Marks:
    """Skip unless every package imports; the reason names the extra that installs it."""
    missing = [p for p in packages if not _installed(p)]
    extras = sorted({EXTRAS.get(p, p) for p in missing})
    reason = f"needs {', '.join(missing)}: pip install -e '.[{','.join(extras)}]'"
    return Marks([pytest.mark.extra, pytest.mark.skipif(bool(missing), reason=reason)])
