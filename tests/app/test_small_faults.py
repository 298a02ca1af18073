"""Issue #28, item 7: commands that paste back, a refused prepare that leaves no stale temporary,
and ``val_last`` after a resume with nothing left to fit."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from issf.train.pipeline import _last_validation_logged
from issf.utils.commands import override_arg, run_command


@pytest.mark.parametrize("path", ["/runs/plain/checkpoints/last.ckpt", "/runs/with space/last.ckpt",
                                  "/runs/réunion ü/last.ckpt", "/runs/it's/last.ckpt", "/runs/a=b,c/last.ckpt"])
def test_a_printed_override_parses_back_to_the_same_value(path):
    word = override_arg("ckpt_path", path)
    [arg] = shlex.split(word)  # the shell gives Hydra one argument ...
    parsed = OverridesParser.create().parse_override(arg)  # ... that Hydra reads back as the path
    assert parsed.key_or_group == "ckpt_path" and parsed.value() == path


def test_the_resume_command_keeps_the_overrides_and_the_root(monkeypatch):
    monkeypatch.setenv("ISSF_ROOT", "/data/my runs")
    command = run_command(["experiment=smoke", "model.optimizer.lr=3e-3", "+tags=[a b]"],
                          override_arg("ckpt_path", "/data/my runs/x/last.ckpt"))
    words = shlex.split(command)
    assert words[:3] == ["ISSF_ROOT=/data/my runs", "python", "run.py"]
    assert words[3:6] == ["experiment=smoke", "model.optimizer.lr=3e-3", "+tags=[a b]"]
    assert OverridesParser.create().parse_override(words[6]).value() == "/data/my runs/x/last.ckpt"
    monkeypatch.delenv("ISSF_ROOT")
    assert run_command(["seed=3"]) == "python run.py seed=3"


def test_a_refused_prepare_removes_a_killed_prepares_temporary(tmp_path):
    from issf.data.prepare import convert_wtalc
    from tests.data.test_convert import write_wtalc

    folder = write_wtalc(tmp_path / "Toy-Annotations")
    out = tmp_path / "toy.h5"
    convert_wtalc(folder, out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".toy.h5.tmp-{dead}"  # what a killed prepare leaves
    stale.write_bytes(b"\0" * 1024)
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_wtalc(folder, out)
    assert not stale.exists()
    assert out.is_file()


def test_val_last_of_a_run_resumed_after_its_last_epoch_comes_from_its_history(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss_total,val/AVG,val/mAP@0.5\n"
        "4,10,1.0,30.5,20.0\n5,12,0.9,,\n9,20,0.8,35.25,22.5\n10,22,0.7,,\n")
    assert _last_validation_logged(tmp_path) == {"AVG": 35.25, "mAP@0.5": 22.5}
    assert _last_validation_logged(tmp_path / "elsewhere") == {}


@pytest.mark.slow  # spawns `python run.py`
def test_a_command_refused_before_any_work_leaves_no_run_directory(tmp_path):
    from tests.reference import ROOT

    out = subprocess.run([sys.executable, "run.py", "experiment=smoke", "model.network.dropout=1.0",
                          f"paths.root_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0 and "model.network.dropout: must be in [0, 1)" in out.stderr + out.stdout
    runs = tmp_path / "logs" / "train" / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []
    assert not (tmp_path / "data").exists()  # nor any generated data


def test_an_optional_logger_without_its_package_names_the_extra(tmp_path, monkeypatch):
    """wandb and tensorboard are extras: a logger whose package is missing says which to install."""
    import importlib.util

    from issf.app import build
    from tests.conftest import compose_cfg

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"logger=wandb needs the wandb package: pip install -e '\.\[wandb\]'"):
        build.build_trainer(compose_cfg(tmp_path, "experiment=smoke", "logger=wandb"))
    build.check_logger_packages(compose_cfg(tmp_path, "experiment=smoke", "logger=csv"))  # the default needs none


def test_the_core_install_declares_what_it_imports_and_keeps_loggers_optional():
    import tomllib

    from tests.reference import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("[")[0].lower() for d in project["dependencies"]}
    assert "pyyaml" in core and "wandb" not in core and "tensorboard" not in core
    extras = project["optional-dependencies"]
    assert any(d.startswith("wandb") for d in extras["wandb"]) and any(d.startswith("tensorboard") for d in extras["tensorboard"])
    assert any(d.startswith("optuna") for d in extras["hpo"]) and "optuna" not in core
    assert "issf[wandb,tensorboard,slurm,hpo]" in extras["dev"]  # [dev] holds every extra
