"""The console: the config tree at start, known third-party noise filtered in one place."""

from __future__ import annotations

import logging
import warnings

from omegaconf import DictConfig, OmegaConf

# known third-party console noise: deprecation notes of Lightning's internals, its advertising and
# accelerator lines, W&B's notice about an unused setting, and Lightning's advice to sync
# epoch-level logs across ranks (evaluation metrics are gathered by the metrics themselves;
# training losses are logged per rank on purpose)
_NOISY_WARNINGS = (r".*LeafSpec.*", r".*anonymous setting has no effect.*", r".*sync_dist=True.*")
_NOISY_LIGHTNING_LINES = ("litlogger", "GPU available", "TPU available", "HPU available")


def quiet_third_party() -> None:
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not any(text in record.getMessage() for text in _NOISY_LIGHTNING_LINES))


def print_config_tree(cfg: DictConfig) -> None:
    """The resolved config as a tree, one branch per top-level group (as lightning-hydra-template)."""
    from rich import print as rich_print
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(str(key)).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    rich_print(tree)
