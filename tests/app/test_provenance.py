"""A run's results are what its config says (issue #28): the feature file's identity recorded and
checked (item 1), resumes that refuse changed settings (item 2; a changed network structure even
with resume_changes=allow), nothing rewritten by a failed resume or into a read-only run directory
(item 3), one directory per run and per sweep (item 4)."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from issf.app import tasks
from issf.app.resume import (
    NetworkStructureError,
    ResumeConfigError,
    check_network_structure,
    check_resume_config,
    config_changes,
)
from issf.app.run_dir import claim_directory
from issf.app.run_lock import RunDirectoryBusy, RunDirectoryLock
from issf.data.h5 import FeatureFile, FeatureFileError, VideoEntry, write_feature_file
from issf.train.checkpoints import CheckpointError, check_feature_identity, read_checkpoint
from tests.conftest import ROOT, compose_cfg

SMOKE = ["experiment=smoke", "~callbacks.plots"]
SHORT = [*SMOKE, "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def files(folder: Path) -> dict[Path, bytes]:
    """Every file below ``folder`` (hidden ones included) and its bytes."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def tiny(path: Path, value: float, videos: int = 4) -> Path:
    entries = [VideoEntry(f"v{i}", "train" if i % 2 else "test", 6.4, np.full((10, 3), value + i, np.float32),
                          np.array([1, 0], np.uint8), np.array([[0.0, 3.0]]), np.array([0])) for i in range(videos)]
    return write_feature_file(path, entries, ["a", "b"], snippet_seconds=0.64, feature_name="x", overwrite=True)


# ------------------------------------------------------------------ item 1: the feature file's identity


def test_a_feature_file_replaced_under_a_reader_is_refused_naming_both_checksums(tmp_path):
    path = tiny(tmp_path / "f.h5", 0.0)
    f = FeatureFile(path)
    before = f.checksum
    f.features(0)
    f.close()  # the fit ends: the test reopens the path
    tiny(tmp_path / "other.h5", 5.0, videos=2)
    os.replace(tmp_path / "other.h5", path)  # regenerated / prepared again with overwrite=true
    after = FeatureFile(path).checksum
    with pytest.raises(FeatureFileError, match="replaced while in use") as caught:
        f.features(0)
    assert before in str(caught.value) and after in str(caught.value)
    with pytest.raises(FeatureFileError, match=re.escape(after)):
        f.check_unchanged()


def test_other_features_than_a_checkpoint_was_trained_on_need_allow_other_features(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        check_feature_identity("sha256:aaa", "run/last.ckpt", "sha256:bbb", "data/f.h5")
    assert "sha256:aaa" in str(caught.value) and "sha256:bbb" in str(caught.value)
    assert "allow_other_features=true" in str(caught.value)
    assert check_feature_identity("sha256:aaa", "c", "sha256:bbb", "f", allow=True) == {
        "trained_feature_checksum": "sha256:aaa", "allow_other_features": True}
    assert check_feature_identity("sha256:aaa", "c", "sha256:aaa", "f") == {}


@pytest.mark.slow
def test_checksum_recorded_and_checked_by_eval_and_the_test_after_fit(tmp_path):
    from issf.app.build import build_datamodule, build_trainer, ensure_data
    from issf.train.pipeline import evaluate_checkpoint

    cfg = compose_cfg(tmp_path, *SHORT)
    out = tmp_path / "out"
    tasks.task_train(cfg, out)
    checksum = FeatureFile(tmp_path / "data" / "synthetic_smoke.h5").checksum
    assert json.loads((out / "metrics.json").read_text())["feature_checksum"] == checksum
    ckpt = out / "checkpoints" / "last.ckpt"
    assert read_checkpoint(ckpt)["hyper_parameters"]["feature_checksum"] == checksum
    with h5py.File(out / "predictions.h5") as h5:
        assert h5.attrs["feature_checksum"] == checksum

    # another data.synthetic setting: its own file, the trained-on one untouched
    other_cfg = compose_cfg(tmp_path, *SHORT, "data.synthetic.seed=5")
    ensure_data(other_cfg)
    assert Path(other_cfg.data.datamodule.path).name.startswith("synthetic_smoke-")
    assert FeatureFile(tmp_path / "data" / "synthetic_smoke.h5").checksum == checksum
    other = FeatureFile(other_cfg.data.datamodule.path).checksum
    with pytest.raises(CheckpointError) as caught:
        evaluate_checkpoint(str(ckpt), build_trainer(other_cfg), build_datamodule(other_cfg), tmp_path / "eval")
    assert checksum in str(caught.value) and other in str(caught.value)
    metrics = evaluate_checkpoint(str(ckpt), build_trainer(other_cfg), build_datamodule(other_cfg), tmp_path / "eval",
                                  allow_other_features=True)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["allow_other_features"] is True and saved["trained_feature_checksum"] == checksum
    assert saved["feature_checksum"] == other and "test" in metrics


@pytest.mark.slow
def test_the_test_after_fit_stops_when_the_features_were_replaced_during_the_fit(tmp_path):
    import pytorch_lightning as pl

    from issf.app.build import build_datamodule, build_module, build_trainer, ensure_data
    from issf.data.synthetic import SyntheticConfig, generate
    from issf.train.pipeline import fit_and_test

    cfg = compose_cfg(tmp_path, *SMOKE, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1")
    ensure_data(cfg)
    path = Path(cfg.data.datamodule.path)

    class Replace(pl.Callback):  # what a concurrent regeneration / prepare overwrite=true does
        def on_train_end(self, trainer, module):
            settings = dict(cfg.data.synthetic, seed=9, num_train=4, num_test=2)
            generate(SyntheticConfig(**settings), tmp_path / "new.h5")
            os.replace(tmp_path / "new.h5", path)

    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(Replace())
    with pytest.raises(FeatureFileError, match="replaced while in use"):
        fit_and_test(trainer, module, datamodule, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


# ------------------------------------------------------------------ item 2: resume refuses changed settings


def test_config_changes_name_each_key_and_let_free_keys_change():
    old = {"seed": 2, "trainer": {"max_epochs": 6}, "model": {"network": {"schedule_epochs": 6, "tau": 0.2},
                                                              "optimizer": {"lr": 1e-3}},
           "logger": {"csv": {"save_dir": "a"}}, "paths": {"output_dir": "a"}}
    new = {"seed": 2, "trainer": {"max_epochs": 8}, "model": {"network": {"schedule_epochs": 8, "tau": 0.2},
                                                              "optimizer": {"lr": 1e-3}},
           "logger": {"csv": {"save_dir": "b"}}, "paths": {"output_dir": "b"}}
    assert config_changes(old, new) == {}  # extending a run (the schedule follows max_epochs), other paths
    new["seed"], new["model"]["optimizer"]["lr"] = 7, 3e-3
    assert config_changes(old, new) == {"model.optimizer.lr": (1e-3, 3e-3), "seed": (2, 7)}
    checkpoint = {"hyper_parameters": {"run_config": old}}
    with pytest.raises(ResumeConfigError) as caught:
        check_resume_config(checkpoint, "run/last.ckpt", new, "refuse")
    assert "model.optimizer.lr: 0.001 -> 0.003" in str(caught.value) and "seed: 2 -> 7" in str(caught.value)
    assert check_resume_config(checkpoint, "c", new, "allow") == {
        "resume_changes": {"model.optimizer.lr": [1e-3, 3e-3], "seed": [2, 7]}}


def test_a_checkpoint_from_before_the_optimizer_target_resumes_with_the_same_adam():
    """Run configs stored before model.optimizer had a _target_ hold Adam's settings alone."""
    stored = {"model": {"optimizer": {"lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 5e-4, "fused": True}}}
    now = {"model": {"optimizer": {"target": "torch.optim.Adam", "_partial_": True, **stored["model"]["optimizer"]}}}
    assert config_changes(stored, now) == {}
    now["model"]["optimizer"]["target"] = "torch.optim.AdamW"
    assert config_changes(stored, now) == {"model.optimizer.target": ("torch.optim.Adam", "torch.optim.AdamW")}


@pytest.mark.slow
def test_resume_refuses_changed_settings_and_applies_an_allowed_lr(tmp_path):
    import csv

    out = tmp_path / "out"
    lr_monitor = "callbacks=[default,lr_monitor]"  # the learning rate of each epoch in the CSV log
    tasks.task_train(compose_cfg(tmp_path, *SHORT, lr_monitor), out)
    ckpt = f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
    for changes, named in [(["model.optimizer.lr=3e-3"], ["model.optimizer.lr: 0.001 -> 0.003"]),
                           (["seed=7"], ["seed: 2 -> 7"]),
                           (["data.synthetic.seed=5"], ["data.synthetic.seed: 0 -> 5"]),
                           (["model.network.memory_read=gt_classes", "model.network.pseudo_labels=false"],
                            ["model.network.memory_read: 'class0' -> 'gt_classes'",
                             "model.network.pseudo_labels: True -> False"])]:
        with pytest.raises(ResumeConfigError) as caught:
            tasks.task_train(compose_cfg(tmp_path, *SHORT, "trainer.max_epochs=3", *changes, ckpt), out)
        for text in named:
            assert text in str(caught.value)
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 1  # nothing trained
    tasks.task_train(compose_cfg(tmp_path, *SHORT, lr_monitor, "trainer.max_epochs=3", "model.optimizer.lr=3e-3",
                                 "resume_changes=allow", ckpt), out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert metrics["resume_changes"] == {"model.optimizer.lr": [0.001, 0.003]}
    rows = [r for r in csv.DictReader(open(out / "csv" / "metrics.csv")) if r.get("lr-Adam")]
    by_step = sorted((int(r["step"]), float(r["lr-Adam"])) for r in rows)  # one row at each epoch's start
    assert [lr for _, lr in by_step] == pytest.approx([1e-3, 1e-3, 3e-3], rel=1e-6)


def _network_checkpoint(**settings) -> tuple[dict, dict]:
    """A checkpoint's state_dict and hyper-parameters as the module saves them, of a small network."""
    import dataclasses

    from issf.model.config import ISSFConfig, NetworkSettings
    from issf.model.network import ISSF

    network = dataclasses.asdict(NetworkSettings(embed_dim=16, **settings))
    net = ISSF(ISSFConfig(num_classes=3, input_dim=8, **network))
    return {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"num_classes": 3, "input_dim": 8, "network": network}}, network


@pytest.mark.parametrize("change, named", [
    ({"memory": False}, ["memory: True -> False"]),
    ({"non_salient_branch": False}, ["non_salient_branch: True -> False"]),
    ({"channel_interaction": False}, ["channel_interaction: True -> False"]),
    ({"embed_dim": 32}, ["embed_dim: 16 -> 32"]),
    ({"memory_background": True}, ["memory_background: False -> True"]),
    ({"memory_read": "shared"}, ["memory_read: 'class0' -> 'shared'"]),
    ({"memory_slots": 5, "tau": 0.5}, ["memory_slots: 9 -> 5"]),
    ({"saliency": False, "memory": False}, ["memory: True -> False", "saliency: True -> False"]),
])
def test_a_changed_network_structure_is_refused_naming_each_structural_key(change, named):
    checkpoint, network = _network_checkpoint()
    with pytest.raises(NetworkStructureError) as caught:
        check_network_structure(checkpoint, "run/last.ckpt", {**network, **change})
    message = str(caught.value)
    assert isinstance(caught.value, ResumeConfigError)
    assert [line.strip() for line in message.splitlines() if line.startswith("  model.network.")] == \
        [f"model.network.{text}" for text in named]  # only the keys that change the structure
    assert "not even with resume_changes=allow" in message and "start a new run" in message
    # settings that keep the structure: the resume goes on (their changes are checked by check_resume_config)
    check_network_structure(checkpoint, "run/last.ckpt", {**network, "tau": 0.5, "memory_read": "gt_classes"})


@pytest.mark.slow
def test_a_structure_change_is_refused_with_resume_changes_allow_leaving_the_run_as_it_was(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "run.py"), *SHORT, f"paths.root_dir={tmp_path}"]
    subprocess.run([*command, f"hydra.run.dir={run}"], cwd=ROOT, env=ENV, capture_output=True, check=True, timeout=300)
    before = files(run)
    assert {"config_resolved.yaml", "run.log", "metrics.json", "config.yaml"} <= {p.name for p in before}
    proc = subprocess.run([*command, "trainer.max_epochs=3", "resume_changes=allow", "model.network.memory=false",
                           f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "model.network.memory: True -> False" in output and "not even with resume_changes=allow" in output
    assert "Unexpected key(s) in state_dict" not in output
    assert files(run) == before  # .hydra/*, run.log, config_resolved.yaml, metrics.json, the lock: as they were


# ------------------------------------------------------------------ item 3: a failed resume writes nothing


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_directory_as_it_was(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text(f"# finished run's {name}\n")
    (run / "config_resolved.yaml").write_text("# finished run\n")
    (run / "run.log").write_text("finished\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *SMOKE, f"paths.root_dir={tmp_path}",
                           f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "damaged or truncated checkpoint" in proc.stdout + proc.stderr
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".issf.lock"}
    assert after == before
    assert not (tmp_path / "data").exists()  # stopped before the dataset was generated


# every write into the folder given first fails as on a read-only file system (EROFS), whichever
# function makes it (Hydra's log handler, its config copy, the lock, a temporary file); then run.py
READ_ONLY = """
import builtins, errno, io, os, runpy, sys
folder = os.path.realpath(sys.argv.pop(1))
def inside(path):
    try:
        real = os.path.realpath(os.fsdecode(path))
    except TypeError:  # a file descriptor
        return False
    return real == folder or real.startswith(folder + os.sep)
def refuse(path):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
real_open, real_os_open = builtins.open, os.open
def fake_open(file, mode="r", *args, **kwargs):
    if set(mode) & set("wax+") and inside(file):
        refuse(file)
    return real_open(file, mode, *args, **kwargs)
def fake_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND) and inside(path):
        refuse(path)
    return real_os_open(path, flags, *args, **kwargs)
builtins.open = io.open = fake_open
os.open = fake_os_open
for name in ("mkdir", "rmdir", "unlink", "remove", "truncate", "rename", "replace"):
    def guarded(path, *args, _real=getattr(os, name), **kwargs):
        if inside(path):
            refuse(path)
        return _real(path, *args, **kwargs)
    setattr(os, name, guarded)
sys.argv[0] = sys.argv[1]
del sys.argv[1]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python run.py` has it
runpy.run_path(sys.argv[0], run_name="__main__")
"""
# a read-only bind mount of the folder ($0) in a new mount namespace, then the command ($@)
MOUNT_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def _read_only_command(how: str, folder: Path, command: list[str]) -> list[str]:
    if how == "simulated":
        script = folder.parent / "read_only.py"
        script.write_text(READ_ONLY)
        return [sys.executable, str(script), str(folder), *command[1:]]
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", MOUNT_READ_ONLY, str(folder), "sh", "-c",
                            f"! touch {folder}/probe 2>/dev/null"], capture_output=True)
    if probe.returncode != 0 or (folder / "probe").exists():
        pytest.skip("no read-only bind mount here (unshare/mount not allowed); the simulated case covers it")
    return ["unshare", "-rm", "sh", "-c", MOUNT_READ_ONLY, str(folder), *command]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["simulated", "mount"])
def test_a_resume_into_a_read_only_run_directory_stops_with_one_line_and_changes_nothing(tmp_path, how):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text(f"# finished run's {name}\n")
    for name in ("config_resolved.yaml", "run.log", "metrics.json", ".issf.lock"):
        (run / name).write_text(f"finished run's {name}\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 any checkpoint")
    before = files(run)
    command = [sys.executable, str(ROOT / "run.py"), *SMOKE, f"paths.root_dir={tmp_path}",
               f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    proc = subprocess.run(_read_only_command(how, run, command), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"run.py: run directory {run.resolve()} cannot be written (Read-only file system); make it writable, or "
        f"run into another directory: hydra.run.dir=<new directory>"], proc.stderr[-3000:]
    assert files(run) == before
    assert not (tmp_path / "data").exists()  # stopped before the dataset was generated


# ------------------------------------------------------------------ item 4: one directory per run


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    from issf.app import run_dir

    name = str(tmp_path / "runs" / "2024-01-01_00-00-00")
    first = claim_directory(name)
    assert claim_directory(name) == first  # the same process resolves it again
    monkeypatch.setattr(run_dir, "_CLAIMED", {})  # another process, the same second
    second = claim_directory(name)
    assert (first, second) == (name, name + "_2") and Path(second).is_dir()


class SameSecond(datetime.datetime):
    """Hydra's ``now`` resolver (which names run and sweep directories) always in one second."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> SameSecond:
        return cls(2024, 1, 1, 0, 0, 0)


@pytest.mark.parametrize("overrides", [[], *[[f"debug={p.stem}"] for p in sorted((ROOT / "conf" / "debug").glob("*.yaml"))]],
                         ids=lambda overrides: " ".join(overrides) or "default")
def test_runs_and_sweeps_started_in_the_same_second_get_their_own_directories_in_every_config(
        tmp_path, monkeypatch, overrides):
    import hydra.core.utils
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import issf.app.main  # noqa: F401  (its resolvers)
    from issf.app import run_dir

    monkeypatch.setattr(hydra.core.utils, "datetime", SameSecond)

    def directory(key: str) -> Path:  # what a new process launched now resolves
        monkeypatch.setattr(run_dir, "_CLAIMED", {})
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
        return Path(OmegaConf.select(cfg, key))

    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        first, second = directory(key), directory(key)
        assert first.name == "2024-01-01_00-00-00" and second == first.with_name(first.name + "_2"), key
        assert first.is_dir() and second.is_dir()


# run.py with Hydra's `now` in one second (SameSecond)
SAME_SECOND = """
import datetime, sys
import hydra.core.utils
class SameSecond(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2024, 1, 1, 0, 0, 0)
hydra.core.utils.datetime = SameSecond
sys.argv[0] = "run.py"
from issf.app.main import cli
cli()
"""


@pytest.mark.slow
def test_two_sweeps_started_in_the_same_second_each_get_one_directory_for_all_their_jobs(tmp_path):
    path = tiny(tmp_path / "f.h5", 0.0)
    sweeps = [subprocess.Popen([sys.executable, "-c", SAME_SECOND, "-m", "task=verify", f"paths.root_dir={tmp_path}",
                                f"data.datamodule.path={path}", "seed=1,2", f"hydra/launcher={launcher}"],
                               cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for launcher in ("basic", "joblib")]  # jobs in the launching process / in worker processes
    outputs = [sweep.communicate(timeout=300)[0] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    multiruns = tmp_path / "logs" / "verify" / "multiruns"
    assert sorted(p.name for p in multiruns.iterdir()) == ["2024-01-01_00-00-00", "2024-01-01_00-00-00_2"]
    named = [re.findall(r"sweep directory: (\S+)", output) for output in outputs]
    assert sorted(n for names in named for n in names) == sorted(str(p) for p in multiruns.iterdir()), outputs
    for sweep_dir in multiruns.iterdir():
        assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml"]
        seeds = [yaml.safe_load((sweep_dir / job / "config_resolved.yaml").read_text())["seed"] for job in "01"]
        assert seeds == [1, 2]
    assert not (tmp_path / "logs" / "verify" / "runs").exists()  # no run directory claimed by a sweep


def test_the_busy_directory_hint_names_hydra_run_dir(tmp_path):
    with RunDirectoryLock(tmp_path):
        with pytest.raises(RunDirectoryBusy, match=re.escape("hydra.run.dir=")):
            RunDirectoryLock(tmp_path).__enter__()
