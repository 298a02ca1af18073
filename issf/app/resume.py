"""What a resume (``task=train ckpt_path=<run>/checkpoints/last.ckpt``) may change.

The checkpoint stores the run config it was trained with (module hyper-parameter ``run_config``).
A resume compares the new config with it: a difference in the data, the model (network, optimizer,
evaluation), the seed or the training schedule is refused, naming each changed key ``old -> new``,
unless ``resume_changes=allow`` (the changes are then recorded in metrics.json under
``resume_changes``). These keys may change freely (:data:`FREE_KEYS`):

* ``trainer.max_epochs`` (to extend a run; ``model.network.schedule_epochs`` may follow it when it
  equals ``trainer.max_epochs`` before and after, as its default ``${trainer.max_epochs}`` does),
  the devices, accelerator, strategy, node count and the trainer's logging and progress options;
* ``logger.*``, ``callbacks.*``, ``paths.*``;
* ``data.datamodule.path`` (which feature file is checked by its checksum), ``num_workers``,
  ``prepare_hint``, ``data.prepare``;
* the run's own keys: ``task``, ``ckpt_path``, ``tags``, ``print_config``, ``test_after_fit``,
  ``allow_other_features``, ``resume_changes``, ``dir``, ``detections``, ``predictions``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

FREE_KEYS = (
    "task", "ckpt_path", "tags", "print_config", "test_after_fit", "allow_other_features", "resume_changes", "dir",
    "detections", "predictions", "optimized_metric", "paths", "logger", "callbacks",
    "trainer.max_epochs", "trainer.devices", "trainer.accelerator", "trainer.strategy", "trainer.num_nodes",
    "trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
    "trainer.enable_model_summary", "trainer.plugins",
    "data.datamodule.path", "data.datamodule.num_workers", "data.datamodule.prepare_hint", "data.prepare",
)
RESUME_CHANGES = ("refuse", "allow")


class ResumeConfigError(ValueError):
    """A resume whose config differs from the checkpoint's in keys that decide the results."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value})
    return out


def _free(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in FREE_KEYS)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys that decide the results and differ between the stored and the new run config,
    ``key -> (old, new)`` (``<absent>`` for a key one of them lacks)."""
    a, b = flatten(old), flatten(new)
    changed = {}
    for key in sorted(set(a) | set(b)):
        before, after = a.get(key, "<absent>"), b.get(key, "<absent>")
        if before == after or _free(key):
            continue
        if key == "model.network.schedule_epochs" and before == a.get("trainer.max_epochs") \
                and after == b.get("trainer.max_epochs"):
            continue  # follows trainer.max_epochs (extending a run)
        changed[key] = (before, after)
    return changed


def check_resume_config(checkpoint: dict[str, Any], ckpt_path: str, new: dict[str, Any], mode: str) -> dict[str, Any]:
    """Raise :class:`ResumeConfigError` naming each changed key ``old -> new`` unless ``mode`` is
    ``allow``; returns what metrics.json records (``resume_changes``: key -> [old, new]), empty
    when nothing that matters changed or the checkpoint stores no run config."""
    if mode not in RESUME_CHANGES:
        raise ValueError(f"resume_changes: expected one of {RESUME_CHANGES}, got {mode!r}")
    old = checkpoint.get("hyper_parameters", {}).get("run_config")
    if not old:
        return {}
    changed = config_changes(old, new)
    if not changed:
        return {}
    if mode != "allow":
        lines = "\n".join(f"  {key}: {before!r} -> {after!r}" for key, before, after in
                          ((k, *v) for k, v in changed.items()))
        raise ResumeConfigError(
            f"resume from {ckpt_path}: the config differs from the one the checkpoint was trained with in\n{lines}\n"
            f"resume with the same settings, start a new run, or pass resume_changes=allow to resume with these "
            f"changes anyway (recorded in metrics.json). Keys that may change on resume: trainer.max_epochs, "
            f"devices, logger, callbacks, paths (issf/app/resume.py)")
    return {"resume_changes": {k: [v[0], v[1]] for k, v in changed.items()}}


def resume_provenance(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """For ``task=train ckpt_path=...``: read the checkpoint (an unusable file is an error naming it)
    and compare its run config with ``cfg`` (:func:`check_resume_config`); returns what metrics.json
    records and the checkpoint, so that it is read once."""
    from issf.app.build import plain_config
    from issf.train.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(cfg.ckpt_path)
    return check_resume_config(checkpoint, cfg.ckpt_path, plain_config(cfg),
                               str(cfg.get("resume_changes", "refuse"))), checkpoint
