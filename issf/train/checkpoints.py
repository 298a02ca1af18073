"""Checkpoint files: atomic writes, and reads that say which file is wrong and how.

Lightning writes checkpoints through a ``CheckpointIO`` plugin; :class:`AtomicCheckpointIO` writes to
a temporary name beside the target and renames it, so a kill or a full disk never leaves a partial
checkpoint at a final path, and reads through :func:`read_checkpoint`, which loads with
``weights_only=True`` and names the file and the fault instead of torch's generic messages.
"""

from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from issf.utils.io import atomic_write

# keys every checkpoint written by this project's trainer has (Lightning's own and the module's)
REQUIRED_KEYS = ("state_dict", "hyper_parameters", "pytorch-lightning_version")


class CheckpointError(ValueError):
    """A file that cannot be used as an issf checkpoint; the message names the file and the fault."""


def _describe_foreign(path: Path) -> str:
    """What the file looks like when torch cannot read it."""
    head = path.read_bytes()[:8]
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a feature file?), not a checkpoint"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON/text file, not a checkpoint"
    if head.startswith(b"PK"):
        return "a damaged or truncated checkpoint (its zip archive cannot be read)"
    return "not a PyTorch checkpoint (unknown content)"


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", require_keys: bool = True) -> dict[str, Any]:
    """Load an issf/Lightning checkpoint safely (``weights_only=True``); raise :class:`CheckpointError`
    naming the file when it is missing, empty, truncated, not a checkpoint, or (``require_keys``) not
    one of this project."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty (0 bytes; an interrupted write?)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if zipfile.is_zipfile(path):
            raise CheckpointError(
                f"checkpoint {path}: holds objects other than tensors and plain data, so it was not written "
                f"by issf and is not loaded (loading arbitrary objects can run code)"
            ) from err
        raise CheckpointError(f"checkpoint {path}: {_describe_foreign(path)}") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path}: {_describe_foreign(path)} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path}: holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint] if require_keys else []
    if missing:
        kind = "a plain state_dict (model weights only)" if all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()) else "not a checkpoint of this project"
        raise CheckpointError(f"checkpoint {path}: {kind}; missing {', '.join(missing)}")
    return checkpoint


def check_checkpoint_fits(checkpoint: dict[str, Any], path: str | os.PathLike, num_classes: int, input_dim: int) -> None:
    """Raise :class:`CheckpointError` when the checkpoint was trained for another class count or
    feature dimension than the data it is used with (both values named)."""
    hparams = checkpoint.get("hyper_parameters", {})
    for key, expected, what in (("num_classes", num_classes, "classes"), ("input_dim", input_dim, "feature dimension")):
        trained = hparams.get(key)
        if trained is not None and int(trained) != int(expected):
            raise CheckpointError(
                f"checkpoint {path} was trained with {what} {trained}, but the data have {expected}: "
                f"use the data (data=..., experiment=...) it was trained on"
            )


def check_feature_identity(
    trained: str | None, source: str | os.PathLike, checksum: str, path: str | os.PathLike, allow: bool = False,
) -> dict[str, Any]:
    """Compare the checksum of the feature file ``source`` (a checkpoint or predictions file) came
    from with the one of the file ``path`` it is now used with: raise :class:`CheckpointError`
    naming both when they differ, unless ``allow`` (``allow_other_features=true``). Returns what
    metrics.json records about it (empty when they agree or ``source`` predates the record)."""
    if not trained or trained == checksum:
        return {}
    if not allow:
        raise CheckpointError(
            f"{source} came from the feature file with checksum {trained}, but {path} has checksum {checksum}: "
            f"other features (regenerated with other data.synthetic settings, or prepared again). Use the data "
            f"it was trained on, or allow_other_features=true to use these anyway (recorded in metrics.json)")
    return {"trained_feature_checksum": trained, "allow_other_features": True}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: write to a temporary file beside the target, fsync, rename; read
    with :func:`read_checkpoint`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        try:
            with atomic_write(path, "wb") as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as err:  # torch's zip writer reports a full disk as RuntimeError
            detail = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise OSError(getattr(err, "errno", None) or errno.EIO, f"could not write checkpoint {path}: {detail}") from err

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # also Lightning's own files (e.g. the weights a spawn/fork launcher hands back): any dict
        return read_checkpoint(path, map_location=map_location or "cpu", require_keys=False)
