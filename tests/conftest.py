"""Common test helpers: the reference data of ``data/reference`` and small synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from issf.train.runtime import configure_cpu
from tests.reference import REFERENCE, ROOT  # noqa: F401  (the one definition of the reference folder)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
configure_cpu()  # as every training / evaluation task does before it builds a network


def padded_batch(lengths: list[int], dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random non-negative features right-padded with zeros, and their mask."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    x = torch.rand(len(lengths), t, dim, generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    return x * mask[..., None], mask


CONF_DIR = str(ROOT / "conf")


def compose_cfg(tmp_path: Path, *overrides: str):
    """The real project config composed with the compose API, writing into ``tmp_path``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import issf.app.main  # noqa: F401  (its resolvers and config schemas, as run.py has them)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/out", *overrides],
        )


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """W&B offline, quiet, with every W&B folder in tmp_path and an unreachable server."""
    monkeypatch.delenv("ISSF_WANDB_OFFLINE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name, value in {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp_path / "wandb_dir",
        "WANDB_CONFIG_DIR": tmp_path / "wandb_config", "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
        "WANDB_DATA_DIR": tmp_path / "wandb_data", "WANDB_BASE_URL": "http://127.0.0.1:9",
    }.items():
        monkeypatch.setenv(name, str(value))
