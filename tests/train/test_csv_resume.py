"""The CSV history of a resumed run: rows of the epochs the resumed run logs again are dropped
(also when the checkpoint is older than the last logged epoch: a best checkpoint, or a kill after
the next epoch's validation row), earlier rows stay exactly as they were."""

from __future__ import annotations

import csv
import warnings
from types import SimpleNamespace

import pytest

from issf.train.callbacks import LogHistoryOnResume
from issf.train.loggers import ResumableCSVLogger


def new_logger(folder) -> ResumableCSVLogger:
    return ResumableCSVLogger(save_dir=str(folder), name="csv", version="", flush_logs_every_n_steps=1)


def log_epochs(logger: ResumableCSVLogger, epochs, validation_of_next: bool = False) -> None:
    """Per epoch a training row, and every second epoch a validation row; with
    ``validation_of_next`` a last validation row of the epoch after (a kill before its training row)."""
    for epoch in epochs:
        if epoch % 2 == 1:
            logger.log_metrics({"val/AVG": 10.0 * epoch, "epoch": epoch}, step=3 * epoch + 2)
        logger.log_metrics({"train/loss_total": 1.0 / (epoch + 1), "epoch": epoch}, step=3 * epoch + 2)
    if validation_of_next:
        epoch = epochs[-1] + 1
        logger.log_metrics({"val/AVG": 10.0 * epoch, "epoch": epoch}, step=3 * epoch + 2)
    logger.save()


def rows(folder) -> list[dict[str, str]]:
    with open(folder / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def keyed(table: list[dict[str, str]]) -> list[tuple]:
    return [(r["epoch"], r.get("val/AVG", ""), r.get("train/loss_total", "")) for r in table]


def resume(folder, epoch: int) -> ResumableCSVLogger:
    """A new process's logger whose training starts at ``epoch`` (the checkpoint's epoch + 1)."""
    logger = new_logger(folder)
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=epoch, global_step=3 * epoch, loggers=[logger])
    LogHistoryOnResume().on_train_start(trainer, None)
    return logger


@pytest.mark.parametrize("checkpoint_epoch", [1, 2, 4])
def test_resume_from_an_older_checkpoint_drops_every_later_row(tmp_path, checkpoint_epoch):
    """A best checkpoint (epoch 1 or 2) or the last one (epoch 4) of a run logged up to epoch 5."""
    log_epochs(new_logger(tmp_path), range(6))
    before = keyed(rows(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoint's epoch has its training row: no warning
        logger = resume(tmp_path, checkpoint_epoch + 1)
    kept = keyed(rows(tmp_path))
    assert kept == [r for r in before if int(r[0]) <= checkpoint_epoch]
    # the resumed run logs its epochs again: each epoch appears as often as in a straight run
    log_epochs(logger, range(checkpoint_epoch + 1, 6))
    assert keyed(rows(tmp_path)) == before


def test_a_kill_after_the_next_epochs_validation_row_drops_that_row(tmp_path):
    log_epochs(new_logger(tmp_path), range(4), validation_of_next=True)  # epoch 4: validation row only
    assert keyed(rows(tmp_path))[-1] == ("4", "40.0", "")
    logger = resume(tmp_path, 4)  # last.ckpt of epoch 3
    assert max(int(r["epoch"]) for r in rows(tmp_path)) == 3
    log_epochs(logger, [4, 5])
    straight = tmp_path / "straight"
    log_epochs(new_logger(straight), range(6))
    assert keyed(rows(tmp_path)) == keyed(rows(straight))


def test_a_fresh_run_starts_a_new_history_and_other_ranks_leave_the_file_alone(tmp_path):
    log_epochs(new_logger(tmp_path), range(4))
    logger = new_logger(tmp_path)
    LogHistoryOnResume().on_train_start(SimpleNamespace(is_global_zero=False, current_epoch=0, loggers=[logger]), None)
    assert len(rows(tmp_path)) == 6
    resume(tmp_path, 0)
    assert rows(tmp_path) == []


def test_a_lost_training_row_of_the_checkpoint_epoch_is_reported(tmp_path):
    logger = new_logger(tmp_path)
    log_epochs(logger, range(3))
    logger.log_metrics({"val/AVG": 30.0, "epoch": 3}, step=11)  # epoch 3 validated, its training row lost
    logger.save()
    with pytest.warns(UserWarning, match="no training row for epoch 3"):
        resume(tmp_path, 4)
    assert keyed(rows(tmp_path))[-1] == ("3", "30.0", "")


def test_rows_logged_with_a_step_only_are_cut_back_by_step(tmp_path):
    """Lightning's LearningRateMonitor logs ``lr-Adam`` straight to the logger at each epoch start
    (step = the steps done before it, no epoch): a resume keeps those of the epochs before the
    checkpoint's next one and drops the later ones, which the resumed run logs again."""

    def log_with_lr(logger: ResumableCSVLogger, epochs) -> None:
        for epoch in epochs:
            logger.log_metrics({"lr-Adam": 0.1 * (epoch + 1)}, step=3 * epoch)
            log_epochs(logger, [epoch])

    def lr_rows(folder) -> list[tuple[str, str]]:
        return [(r["step"], r["lr-Adam"]) for r in rows(folder) if r.get("lr-Adam")]

    log_with_lr(new_logger(tmp_path), range(6))
    straight = lr_rows(tmp_path)
    assert len(straight) == 6
    logger = resume(tmp_path, 3)  # last.ckpt of epoch 2: 9 steps done
    assert lr_rows(tmp_path) == straight[:3]
    log_with_lr(logger, range(3, 6))
    assert lr_rows(tmp_path) == straight
    log_with_lr(new_logger(tmp_path / "straight"), range(6))
    assert rows(tmp_path) == rows(tmp_path / "straight")

