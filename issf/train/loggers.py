"""A CSV logger whose history survives a resume: it appends to an existing ``metrics.csv`` under
its existing columns, and drops the rows of epochs a resumed run is about to log again."""

from __future__ import annotations

import csv
import os
import warnings

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from issf.utils.io import atomic_write


def _read_rows(path: str) -> tuple[list[str], list[dict[str, str]]]:
    if not os.path.isfile(path):
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer, seeded with the columns of an existing file; header changes rewrite the
    file atomically with the union of old and new columns."""

    def __init__(self, log_dir: str) -> None:
        _ExperimentWriter.__init__(self, log_dir)  # Lightning's warns that old logs "will be deleted": not here
        self.hparams = {}
        self.metrics_keys = _read_rows(self.metrics_file_path)[0]

    def _check_log_dir_exists(self) -> None:
        pass

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        old_keys, rows = _read_rows(self.metrics_file_path)
        self.metrics_keys = sorted(set(fieldnames) | set(old_keys))
        self._write(rows)

    def _write(self, rows: list[dict[str, str]]) -> None:
        with atomic_write(self.metrics_file_path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)

    def keep_epochs_before(self, epoch: int, step: int | None = None) -> int:
        """Drop logged rows of ``epoch`` and later (a resumed run logs them again); returns how many.
        Rows without an epoch, logged straight to the logger with a step by a callback (Lightning's
        LearningRateMonitor), are kept when their step is below ``step``, the checkpoint's."""

        def logged_before(row: dict[str, str]) -> bool:
            if row.get("epoch") in (None, ""):
                return step is not None and row.get("step") not in (None, "") and float(row["step"]) < step
            return float(row["epoch"]) < epoch

        self.save()
        keys, rows = _read_rows(self.metrics_file_path)
        if not rows:
            return 0
        kept = [r for r in rows if logged_before(r)]
        if epoch > 0 and not any(r.get("epoch") not in (None, "") and float(r["epoch"]) == epoch - 1
                                 and _has_training_values(r) for r in kept):
            # Lightning writes an epoch's training row just after the epoch's checkpoint: a kill in
            # those milliseconds loses the row (the resumed run cannot log it again)
            warnings.warn(f"{self.metrics_file_path}: no training row for epoch {epoch - 1}, the last one "
                          f"the checkpoint completed (the run was killed while writing it)", stacklevel=2)
        if len(kept) != len(rows):
            self.metrics_keys = keys
            self._write(kept)
        return len(rows) - len(kept)


def _has_training_values(row: dict[str, str]) -> bool:
    return any(key.startswith("train/") and value not in (None, "") for key, value in row.items())


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` for runs that may be resumed: see the module docstring. A fresh run (epoch 0)
    into a directory with an old ``metrics.csv`` starts a new history."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def keep_epochs_before(self, epoch: int, step: int | None = None) -> int:
        return self.experiment.keep_epochs_before(epoch, step)
