"""Faults: killed and pre-empted training, resumes, a second process in a run directory, a full disk,
damaged feature files and checkpoints, mistyped options. Each test reproduces the fault."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from issf.app import tasks
from issf.app.run_lock import RunDirectoryBusy, RunDirectoryLock
from issf.data.h5 import FeatureFile, FeatureFileError, VideoEntry, write_feature_file
from issf.train.checkpoints import AtomicCheckpointIO, CheckpointError, check_checkpoint_fits, read_checkpoint
from issf.utils.io import atomic_write, remove_stale_temporaries, temporary_path
from tests.conftest import ROOT

SMOKE = ["experiment=smoke", "~callbacks.plots"]


def run_py(tmp_path: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    """``python run.py`` in a child process (one thread, its own run directory)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "run.py"), *SMOKE, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}",
           *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until last.ckpt holds ``epoch`` (its file name is fixed, so poll the epoch inside)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stdout.read()[-3000:]}")
        if last.is_file():
            try:
                if read_checkpoint(last)["epoch"] >= epoch:
                    return
            except CheckpointError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no last.ckpt for epoch {epoch} after {timeout} s")


def assert_same_history(got: Path, expected: Path, where: str) -> None:
    """Same columns, rows, epochs and steps; values equal up to float32 rounding. (A logged epoch
    mean can differ in its last bit between processes even when the weights are bit-identical:
    the summation order of a reduction depends on memory alignment, while the gradient of a sum
    does not.)"""
    import csv

    rows = [list(csv.DictReader(open(p, newline=""))) for p in (got, expected)]
    assert len(rows[0]) == len(rows[1]), where
    assert [list(r) for r in rows[0]] == [list(r) for r in rows[1]], where
    for a, b in zip(*rows):
        assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]), where
        for key in a:
            if a[key] != b[key]:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6), f"{where}: {key} at step {a['step']}"


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_equals_an_uninterrupted_run(tmp_path):
    """The acceptance check: 30-epoch smoke run killed with SIGKILL mid-training, resumed from
    last.ckpt (in the same run directory, by default); metrics.json and the CSV history equal an
    uninterrupted run's."""
    epochs = ["trainer.max_epochs=30"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    out = finish(run_py(tmp_path, straight, *epochs))
    assert (straight / "metrics.json").is_file(), out[-3000:]

    # a random epoch, then a random moment within the next one (at least 20 ms after the epoch's
    # checkpoint: Lightning logs the epoch's training row a few ms after it, docs/framework.md 5)
    rng = random.Random()
    epoch = rng.randint(2, 25)
    proc = run_py(tmp_path, killed, *epochs)
    wait_for_epoch(killed, epoch - 1, proc)
    start = time.monotonic()
    wait_for_epoch(killed, epoch, proc)
    delay = rng.uniform(0.02, max(0.03, time.monotonic() - start))
    time.sleep(delay)
    proc.kill()
    proc.wait()
    assert not (killed / "metrics.json").exists()
    # README's resume command: no hydra.run.dir; the checkpoint's run directory is reused
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *SMOKE, f"paths.root_dir={tmp_path}", *epochs,
         f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    where = f"killed {delay:.3f} s after the checkpoint of epoch {epoch}"
    assert resumed.returncode == 0, f"{where}\n{resumed.stdout[-2000:]}{resumed.stderr[-3000:]}"
    expected = json.loads((straight / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    assert got == expected, where
    assert_same_history(killed / "csv" / "metrics.csv", straight / "csv" / "metrics.csv", where)


@pytest.mark.slow
def test_resume_into_a_new_run_directory_keeps_best_tracking_and_history(tmp_path):
    """Stopped after 6 of 12 epochs, resumed into another directory: the same figures as 12 epochs
    straight, the best checkpoint included (it stays in the first directory)."""
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    assert finish(run_py(tmp_path, straight, "trainer.max_epochs=12")) and (straight / "metrics.json").is_file()
    # the first 6 epochs of a 12-epoch run: the memory's EMA schedule length stays 12
    finish(run_py(tmp_path, first, "trainer.max_epochs=6", "model.network.schedule_epochs=12", "test_after_fit=false"))
    out = finish(run_py(tmp_path, second, "trainer.max_epochs=12", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"))
    assert (second / "metrics.json").is_file(), out[-3000:]
    expected = json.loads((straight / "metrics.json").read_text())
    got = json.loads((second / "metrics.json").read_text())
    best_path = Path(got["val_best"].pop("path"))
    expected_best = expected["val_best"].pop("path")
    assert got == expected
    # the best epoch of the straight run, found in whichever directory wrote it
    assert best_path.name == Path(expected_best).name
    assert (best_path if best_path.is_absolute() else second / best_path).is_file()
    assert_same_history(second / "csv" / "metrics.csv", straight / "csv" / "metrics.csv", "resumed elsewhere")


@pytest.mark.slow
def test_sigterm_stops_with_a_resumable_checkpoint_and_a_nonzero_exit(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_py(tmp_path, run_dir, "trainer.max_epochs=200")
    wait_for_epoch(run_dir, 1, proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=120)
    assert proc.returncode == tasks.SIGTERM_EXIT_CODE, out[-3000:]
    assert "stopped by SIGTERM; resume with:" in out and "last.ckpt" in out
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] >= 1
    assert not (run_dir / "metrics.json").exists()


def test_a_second_process_cannot_use_a_busy_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirectoryLock(run_dir):
        proc = run_py(tmp_path, run_dir, "trainer.max_epochs=1")
        out = finish(proc, timeout=120)
        assert proc.returncode != 0
        assert f"run directory {run_dir} is in use by pid {os.getpid()}" in out
        assert not (run_dir / "config_resolved.yaml").exists()  # it wrote nothing there
        with pytest.raises(RunDirectoryBusy):
            # flock is per open file: a second lock object in the same process is refused too
            RunDirectoryLock(run_dir).__enter__()
    with RunDirectoryLock(run_dir):  # released on exit
        pass


def test_the_next_run_removes_temporaries_of_killed_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "checkpoints" / f".last.ckpt.tmp-{dead.stdout.strip()}"
    stale.parent.mkdir()
    stale.write_bytes(b"partial")
    live = tmp_path / f".metrics.json.tmp-{os.getpid()}"  # this process's: still being written
    live.write_text("{")
    with RunDirectoryLock(tmp_path):
        pass
    assert not stale.exists() and live.exists()
    assert remove_stale_temporaries(tmp_path) == []


def _fill(f, size: int) -> None:
    f.write(b"x" * size)


def test_atomic_write_leaves_the_old_file_and_no_temporary_on_error(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        with atomic_write(target, "wb") as f:
            _fill(f, 100)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_checkpoint_write_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "epoch_003.ckpt"

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file data/0: "
                           "file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=f"could not write checkpoint {target}"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert list(target.parent.iterdir()) == []


def _small_tmpfs(tmp_path: Path, megabytes: int) -> Path | None:
    mount = tmp_path / "small"
    mount.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)],
                        capture_output=True).returncode == 0
    return mount if ok else None


def test_prepare_on_a_full_disk_fails_cleanly_without_crashing(tmp_path):
    """A small tmpfs where the platform allows mounting one; the writer stops before HDF5 hits the
    full disk (HDF5 cannot close a file after a failed write, and the process then segfaults)."""
    mount = _small_tmpfs(tmp_path, 20)
    if mount is None:
        pytest.skip("cannot mount a small tmpfs here (the space check is unit-tested below)")
    script = (
        "import numpy as np\n"
        "from issf.data.h5 import VideoEntry, write_feature_file\n"
        "rng = np.random.default_rng(0)\n"
        "videos = (VideoEntry(f'v{i}', 'train', 64.0, rng.random((100, 512)).astype(np.float32),\n"
        "          np.eye(3, dtype=np.uint8)[i % 3]) for i in range(60))\n"
        f"write_feature_file('{mount}/f.h5', videos, list('abc'), snippet_seconds=0.64, feature_name='x',\n"
        "                   dtype='float32')\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr[-2000:]  # an exception, not a signal
        assert f"not enough space left for {mount}/f.h5 at video v" in proc.stderr
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)])


def test_space_check_names_file_and_video(tmp_path, monkeypatch):
    import shutil

    from issf.data import h5

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1024))
    with pytest.raises(OSError, match=r"not enough space left for .*f\.h5 at video v0"):
        write_feature_file(tmp_path / "f.h5", [VideoEntry("v0", "train", 1.0, np.ones((2, 4), np.float32),
                                                          np.ones(1, np.uint8))], ["a"], snippet_seconds=0.64, feature_name="x")
    assert list(tmp_path.iterdir()) == [] and h5.SPACE_MARGIN_BYTES > 0


def test_sigterm_during_prepare_removes_the_temporary(tmp_path):
    script = (
        "import numpy as np, time\n"
        "from issf.app import tasks  # installs nothing by itself; the handler below is the app's\n"
        "import signal; signal.signal(signal.SIGTERM, tasks.exit_on_sigterm)\n"
        "from issf.data.h5 import VideoEntry, write_feature_file\n"
        "def videos():\n"
        "    for i in range(10**6):\n"
        "        if i == 3: print('writing', flush=True)\n"
        "        time.sleep(0.01)\n"
        "        yield VideoEntry(f'v{i}', 'train', 6.4, np.ones((10, 8), np.float32), np.ones(1, np.uint8))\n"
        f"write_feature_file('{tmp_path}/f.h5', videos(), ['a'], snippet_seconds=0.64, feature_name='x')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.glob(".f.h5.tmp-*"))) == 1
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == tasks.SIGTERM_EXIT_CODE
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ damaged or foreign files


@pytest.fixture
def feature_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    videos = [VideoEntry(f"v{i}", "train" if i < 4 else "test", 6.4, rng.random((10, 8)).astype(np.float32),
                         np.eye(2, dtype=np.uint8)[i % 2]) for i in range(6)]
    return write_feature_file(tmp_path / "f.h5", videos, ["a", "b"], snippet_seconds=0.64, feature_name="x")


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_hdf5"])
def test_damaged_feature_file_names_the_path(feature_file, damage):
    data = feature_file.read_bytes()
    feature_file.write_bytes({"empty": b"", "truncated": data[: len(data) // 3], "not_hdf5": b"{}"}[damage])
    with pytest.raises(FeatureFileError, match=f"feature file {feature_file}: cannot be opened as HDF5"):
        FeatureFile(feature_file)


def test_inconsistent_metadata_is_reported_at_open(feature_file):
    with h5py.File(feature_file, "r+") as f:
        f.attrs["feature_dim"] = 2048
    with pytest.raises(FeatureFileError, match=r"features has shape \(60, 8\), attribute feature_dim is 2048"):
        FeatureFile(feature_file)


def test_changed_bytes_fail_verification_and_nan_names_video_and_snippet(feature_file):
    assert FeatureFile(feature_file).verify().startswith("sha256:")
    with h5py.File(feature_file, "r+") as f:
        f["features"][23, 5] = np.nan  # video v2 (rows 20-29), snippet 3
    damaged = FeatureFile(feature_file)
    with pytest.raises(FeatureFileError, match="content changed"):
        damaged.verify()
    with pytest.raises(FeatureFileError, match="video v2: non-finite value nan at snippet 3, feature 5"):
        damaged.features(2)
    assert np.isfinite(damaged.features(1)).all()


def _checkpoint(path: Path, **hparams) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "pytorch-lightning_version": "2.6",
                "hyper_parameters": {"num_classes": 4, "input_dim": 64, **hparams}}, path)
    return path


@pytest.mark.parametrize("content,message", [
    ("random", "not a PyTorch checkpoint"),
    ("json", "a JSON/text file, not a checkpoint"),
    ("hdf5", "an HDF5 file (a feature file?), not a checkpoint"),
    ("empty", "the file is empty"),
    ("truncated", "damaged or truncated checkpoint"),
    ("state_dict", "a plain state_dict (model weights only); missing"),
    ("pickled_object", "holds objects other than tensors and plain data"),
    ("missing", "no such file"),
])
def test_bad_checkpoints_name_the_file_and_the_fault(tmp_path, feature_file, content, message):
    path = tmp_path / "model.ckpt"
    good = _checkpoint(tmp_path / "good.ckpt").read_bytes()
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "json":
        path.write_text('{"state_dict": {}}')
    elif content == "hdf5":
        path.write_bytes(feature_file.read_bytes())
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif content == "state_dict":
        torch.save({"w": torch.zeros(2)}, path)
    elif content == "pickled_object":
        torch.save({"state_dict": {}, "hyper_parameters": {}, "pytorch-lightning_version": "2", "x": Path("a")}, path)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    assert str(caught.value).startswith(f"checkpoint {path}") and message in str(caught.value)
    assert "weights_only=False" not in str(caught.value)


def test_checkpoint_of_other_data_names_both_values(tmp_path):
    path = _checkpoint(tmp_path / "m.ckpt")
    check_checkpoint_fits(read_checkpoint(path), path, num_classes=4, input_dim=64)
    with pytest.raises(CheckpointError, match="trained with feature dimension 64, but the data have 2048"):
        check_checkpoint_fits(read_checkpoint(path), path, num_classes=4, input_dim=2048)
    with pytest.raises(CheckpointError, match="trained with classes 4, but the data have 200"):
        check_checkpoint_fits(read_checkpoint(path), path, num_classes=200, input_dim=64)


def test_temporary_names_are_hidden_and_carry_the_pid(tmp_path):
    assert temporary_path(tmp_path / "a.ckpt").name == f".a.ckpt.tmp-{os.getpid()}"


# ------------------------------------------------------------------ mistyped options


@pytest.mark.parametrize("override,key,message", [
    ("model.network.saliency=flase", "model.network.saliency", "not a valid bool"),
    ("model.network.compat.wrap_last=yes please", "model.network.compat.wrap_last", "not a valid bool"),
    ("model.network.dropout=high", "model.network.dropout", "could not be converted to Float"),
    ("model.network.memory_slots=many", "model.network.memory_slots", "could not be converted to Integer"),
])
def test_mistyped_network_options_are_refused_by_the_schema(tmp_path, override, key, message):
    """``model.network`` is typed by its schema (issf.model.config.NetworkSettings): Hydra refuses a
    value of the wrong type while composing, naming the key, before any work."""
    from hydra.errors import ConfigCompositionException

    from tests.conftest import compose_cfg

    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(tmp_path, "experiment=smoke", override)
    cause = str(info.value.__cause__)
    assert message in cause and f"full_key: {key}" in cause


@pytest.mark.parametrize("kwargs,message", [
    ({"saliency": "flase"}, "model.network.saliency: expected true or false, got 'flase'"),
    ({"compat": {"wrap_last": "yes please"}}, "model.network.compat.wrap_last: expected true or false"),
    ({"dropout": "high"}, "model.network.dropout: expected a number, got 'high'"),
])
def test_the_library_checks_types_without_hydra(kwargs, message):
    from issf.model.config import ISSFConfig

    with pytest.raises(TypeError, match=message):
        ISSFConfig(**kwargs)


@pytest.mark.parametrize("override,message", [
    ("data.evaluation.localization.nms=iuo", "nms must be one of"),
    ("data.evaluation.protocol=thumos", "data.evaluation.protocol: expected one of ('anet', 'wtalc')"),
    ("data.evaluation.filter_ambiguous=maybe", "data.evaluation.filter_ambiguous: expected true or false"),
    ("model.network.memory_read=clas0", "model.network.memory_read: expected one of ('class0', 'gt_classes'"),
    ("model.network.saliency_ratio=1.5", "model.network.saliency_ratio: must be in (0, 1]"),
])
def test_mistyped_options_are_errors_naming_key_and_allowed_values(tmp_path, override, message):
    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path, "experiment=smoke", override)
    with pytest.raises((TypeError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
        tasks.task_train(cfg, tmp_path / "out")


# ------------------------------------------------------------------ silent acceptances


def test_misspelt_labels_without_a_class_list_are_an_error(tmp_path):
    from issf.data.prepare import PrepareError, convert_per_video

    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    database = {}
    for i, label in enumerate(["High jump", "High jump", "high_jump", "Long jump"]):
        np.save(feature_dir / f"v{i}.npy", np.ones((10, 4), np.float32))
        database[f"v{i}"] = {"subset": "train", "duration": 6.4,
                             "annotations": [{"segment": [0.0, 3.0], "label": label}]}
    annotation = tmp_path / "gt.json"
    annotation.write_text(json.dumps({"database": database}))
    with pytest.raises(PrepareError, match=r"labels 'High jump', 'high_jump' differ only in case/spacing \(2, 1 uses\)") as caught:
        convert_per_video(feature_dir, annotation, tmp_path / "out.h5")
    assert "v2" in str(caught.value) and not (tmp_path / "out.h5").exists()
    convert_per_video(feature_dir, annotation, tmp_path / "out.h5", allow_similar_labels=True)
    assert FeatureFile(tmp_path / "out.h5").class_names == ["High jump", "Long jump", "high_jump"]


def test_detections_outside_the_video_or_covering_few_videos_warn_with_counts(tmp_path):
    from issf.data.annotations import GroundTruth
    from issf.eval.detections import load_detections

    gt = GroundTruth(["a"], [f"v{i}" for i in range(4)], [10.0] * 4, [[1.0, 2.0]] * 4, [0, 1, 2, 3], [0] * 4)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": {"v0": [{"label": "a", "score": 0.9, "segment": [-1.0, 4.0]},
                                                   {"label": "a", "score": 0.5, "segment": [1.0, 12.0]},
                                                   {"label": "a", "score": 0.4, "segment": [1.0, 2.0]}]}}))
    with pytest.warns(UserWarning) as caught:
        load_detections(path, gt)
    messages = [str(w.message) for w in caught]
    assert any("2 of 3 detections in 1 videos reach outside [0, duration]" in m for m in messages)
    assert any("detections for 1 of the 4 annotated videos (1 videos listed)" in m for m in messages)
