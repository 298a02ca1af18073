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

A change of the network's structure (``model.network.memory``, ``embed_dim``, ``memory_read=shared``,
... : other parameter names or shapes than the checkpoint's state_dict) is refused even with
``resume_changes=allow`` (:func:`check_network_structure`): the checkpoint's weights cannot be loaded
into that network.
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
# an optimizer config without a target (run configs stored before the optimizer was a Hydra
# partial) holds the settings of this Adam
STORED_BEFORE_OPTIMIZER_TARGET = {"model.optimizer.target": "torch.optim.Adam", "model.optimizer._partial_": True}


class ResumeConfigError(ValueError):
    """A resume whose config differs from the checkpoint's in keys that decide the results."""


class NetworkStructureError(ResumeConfigError):
    """A resume whose config builds a network with other parameters than the checkpoint holds."""


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
    for tree in (a, b):
        if any(k.startswith("model.optimizer.") for k in tree) and "model.optimizer.target" not in tree:
            tree.update(STORED_BEFORE_OPTIMIZER_TARGET)
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
            f"resume with the same settings, start a new run, or add resume_changes=allow to resume with these "
            f"changes anyway (recorded in metrics.json). Keys that may change on resume: trainer.max_epochs, "
            f"devices, logger, callbacks, paths (issf/app/resume.py)")
    return {"resume_changes": {k: [v[0], v[1]] for k, v in changed.items()}}


Shapes = dict[str, tuple[int, ...]]


def network_shapes(network: dict[str, Any], num_classes: int, input_dim: int) -> Shapes:
    """Names and shapes of the parameters and buffers (as in a checkpoint's ``state_dict``) of the
    network that ``model.network`` settings build, built on the meta device (no memory, no work)."""
    import torch

    from issf.model.config import ISSFConfig
    from issf.model.network import ISSF

    with torch.device("meta"):
        net = ISSF(ISSFConfig(num_classes=num_classes, input_dim=input_dim, **network))
    return {f"net.{name}": tuple(value.shape) for name, value in net.state_dict().items()}


def _with(settings: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of nested ``settings`` with the dotted ``key`` set to ``value``."""
    out = dict(settings)
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[leaf] = value
    return out


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else str(list(shape))


def _structural_keys(old: dict[str, Any], new: dict[str, Any], num_classes: int, input_dim: int) -> list[str]:
    """The changed ``model.network`` keys that change the network's parameters: the key alone
    changed in the old settings, or alone put back in the new ones, builds another structure.
    All changed keys when no single one explains it (only a combination of them builds)."""
    def shapes(settings: dict[str, Any]) -> Shapes | None:
        try:
            return network_shapes(settings, num_classes, input_dim)
        except (TypeError, ValueError):  # a combination that is not a valid network on its own
            return None

    a, b = flatten(old), flatten(new)
    changed = [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    base_old, base_new = shapes(old), shapes(new)

    structural = []
    for key in changed:
        forward = shapes(_with(old, key, b.get(key))) if key in b else None
        backward = shapes(_with(new, key, a.get(key))) if key in a else None
        if (forward is not None and base_old is not None and forward != base_old) or \
                (backward is not None and base_new is not None and backward != base_new):
            structural.append(key)
    return structural or changed


def check_network_structure(checkpoint: dict[str, Any], ckpt_path: str, network: dict[str, Any]) -> None:
    """Raise :class:`NetworkStructureError` when the ``model.network`` settings of a resume build a
    network whose parameter names or shapes differ from the checkpoint's ``state_dict`` (what
    Lightning would otherwise report as torch's "Unexpected key(s) in state_dict" / "size mismatch"
    after the run directory was written), naming each ``model.network`` key that makes the
    difference ``old -> new`` and the differing tensors. ``resume_changes=allow`` does not lift it."""
    hparams = checkpoint.get("hyper_parameters", {})
    stored = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
    if not stored or "num_classes" not in hparams or "input_dim" not in hparams:
        return
    num_classes, input_dim = int(hparams["num_classes"]), int(hparams["input_dim"])
    built = network_shapes(network, num_classes, input_dim)
    if built == stored:
        return
    tensors = [f"{k} {_shape(stored.get(k))} -> {_shape(built.get(k))}" for k in sorted(set(stored) | set(built))
               if stored.get(k) != built.get(k)]
    old = hparams.get("network") or (hparams.get("run_config") or {}).get("model", {}).get("network")
    if not old:
        named = "  (the checkpoint records no model.network settings)"
    else:
        a, b = flatten(old), flatten(network)
        named = "\n".join(f"  model.network.{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
                          for k in _structural_keys(old, network, num_classes, input_dim)) or \
            "  (the same model.network settings: the network's code differs from the one that wrote the checkpoint)"
    raise NetworkStructureError(
        f"resume from {ckpt_path}: these settings build a network with other parameters than the checkpoint's\n"
        f"{named}\n  (parameters: {'; '.join(tensors)})\n"
        f"a change of the network's structure cannot be resumed, not even with resume_changes=allow (fine-tuning "
        f"from a checkpoint's weights is not supported): resume with the checkpoint's model.network settings, or "
        f"start a new run (without ckpt_path=)")


def resume_provenance(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """For ``task=train ckpt_path=...``: read the checkpoint (an unusable file is an error naming it)
    and compare its run config with ``cfg`` (:func:`check_resume_config`); returns what metrics.json
    records and the checkpoint, so that it is read once."""
    from issf.app.build import plain_config
    from issf.train.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(cfg.ckpt_path)
    new = plain_config(cfg)
    check_network_structure(checkpoint, cfg.ckpt_path, new["model"]["network"])
    return check_resume_config(checkpoint, cfg.ckpt_path, new, str(cfg.get("resume_changes", "refuse"))), checkpoint
