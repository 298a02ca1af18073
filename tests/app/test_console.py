"""The console: a few lines about the run at start (``print_config``), expected user errors as one
line naming the key and the fix (a traceback only with ``HYDRA_FULL_ERROR=1`` or for a bug), hints
written as overrides, the config an evaluation records, and what ``task=synthesize`` wrote."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from issf.app import tasks
from issf.app.console import UserError, config_summary, print_config_mode, user_error
from tests.conftest import ROOT, compose_cfg

SMOKE = ["experiment=smoke", "~callbacks.plots", "logger=none"]


def run_py(*args: str, full_error: bool = False, root: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1", **({"HYDRA_FULL_ERROR": "1"} if full_error else {}))
    roots = [f"paths.root_dir={root}"] if root is not None else []
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *roots], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def runs(root: Path, task: str) -> list[Path]:
    folder = root / "logs" / task / "runs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


# ------------------------------------------------------------------ 1. a quiet console by default

def test_print_config_true_is_the_summary_full_the_tree_false_nothing():
    assert print_config_mode(True) == "summary" and print_config_mode("summary") == "summary"
    assert print_config_mode("full") == "full"
    assert print_config_mode(False) == "none"
    with pytest.raises(ValueError, match=r"print_config: must be true .* full .* or false .* got 'yes'"):
        print_config_mode("yes")


def test_the_summary_names_overrides_data_trainer_seed_and_run_directory_in_a_few_lines(tmp_path):
    overrides = ["experiment=smoke", "model.network.memory=false", "seed=7"]
    cfg = compose_cfg(tmp_path, *overrides)
    lines = config_summary(cfg, overrides, {"experiment": "smoke"}, tmp_path / "run")
    text = "\n".join(lines)
    assert len(lines) <= 7, text
    assert lines[0] == "command line: experiment=smoke model.network.memory=false seed=7"
    assert "task=train experiment=smoke seed=7 tags=[smoke]" in text
    assert f"{tmp_path / 'data' / 'synthetic_smoke.h5'}" in text
    assert "model.network: memory=false (other switches: the defaults)" in text
    assert "trainer: max_epochs=6 accelerator=cpu devices=1" in text
    assert f"run directory: {tmp_path / 'run'}" in text and "config_resolved.yaml" in text
    default = "\n".join(config_summary(compose_cfg(tmp_path, "experiment=smoke"), [], {}, tmp_path))
    assert "model.network:" not in default and "command line: (no overrides)" in default


@pytest.mark.slow  # spawns `python run.py` (a 1-epoch smoke training)
def test_a_run_prints_the_summary_not_the_tree_and_writes_the_whole_config(tmp_path):
    out = run_py(*SMOKE, "trainer.max_epochs=1", "test_after_fit=false", root=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [run] = runs(tmp_path, "train")
    head = out.stdout.split("generating the built-in dataset")[0]
    assert "├──" not in out.stdout and len(head.splitlines()) <= 7, head
    assert head.splitlines()[0].startswith("command line: experiment=smoke") and f"run directory: {run}" in head
    saved = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 1 and saved["model"]["network"]["embed_dim"] == 64
    assert "command line:" in (run / "run.log").read_text()  # the summary goes to the log too


def test_print_config_full_prints_the_tree_and_false_nothing(tmp_path, capsys, caplog):
    from issf.app.console import show_config

    cfg = compose_cfg(tmp_path, "experiment=smoke")
    with caplog.at_level(logging.INFO, logger="issf.app.console"):
        show_config(cfg, "full", [], {}, tmp_path)
        tree = capsys.readouterr().out
        show_config(cfg, "none", [], {}, tmp_path)
        assert capsys.readouterr().out == "" and caplog.records == []
        show_config(cfg, "summary", [], {}, tmp_path)
    assert "├── model" in tree and "embed_dim: 64" in tree and len(tree.splitlines()) > 100
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == ["command line: (no overrides)"]


# ------------------------------------------------------------------ 2. expected user errors: one line

def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as err:
        return err


def test_only_issf_s_own_checks_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    from issf.app.build import check_logger_packages
    from issf.model.config import ISSFConfig

    with pytest.raises(ValueError) as ours:
        ISSFConfig(num_classes=2, input_dim=4, dropout=1.5)
    refusal = user_error(ours.value, "job 3 (x=1): ")
    assert isinstance(refusal, UserError) and str(refusal) == \
        "run.py: job 3 (x=1): model.network.dropout: must be in [0, 1), got 1.5"
    with pytest.raises(ValueError) as numpy_error:
        np.zeros(-1)
    assert user_error(numpy_error.value) is None  # raised by numpy: a bug of ours, keeps its traceback
    assert user_error(_raise(KeyError("x"))) is None and user_error(_raise(RuntimeError("x"))) is None
    with pytest.raises(ModuleNotFoundError) as missing:
        import issf_no_such_module  # noqa: F401
    assert user_error(missing.value) is None  # an import that fails, not a message of ours
    cfg = compose_cfg(tmp_path, "logger=wandb")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError) as extra:
        check_logger_packages(cfg)
    assert "pip install -e '.[wandb]'" in str(user_error(extra.value))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert user_error(ours.value) is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 1-epoch smoke model trained with seed=5 and model.network.pseudo_labels=false: its last checkpoint."""
    root = tmp_path_factory.mktemp("console")
    cfg = compose_cfg(root, *SMOKE, "trainer.max_epochs=1", "test_after_fit=false", "seed=5",
                      "model.network.pseudo_labels=false", f"paths.output_dir={root / 'train'}")
    tasks.task_train(cfg, root / "train")
    return root / "train" / "checkpoints" / "last.ckpt"


def _prepare_existing(tmp_path: Path) -> list[str]:
    from tests.data.test_convert import write_wtalc

    folder = write_wtalc(tmp_path / "Toy-Annotations")
    args = ["task=prepare", "data=thumos14", f"data.prepare.folder={folder}"]
    assert run_py(*args, root=tmp_path).returncode == 0
    return args


@pytest.mark.slow  # spawns `python run.py`
@pytest.mark.parametrize("case", ["value", "missing_file", "existing_file", "refused_resume"])
def test_an_expected_error_is_one_line_naming_the_key_and_the_fix(tmp_path, request, case):
    if case == "value":
        args, task, expected = [*SMOKE, "model.network.dropout=1.5"], "train", \
            "run.py: model.network.dropout: must be in [0, 1), got 1.5"
    elif case == "missing_file":  # real data that was never prepared
        args, task, expected = ["experiment=thumos_full"], "train", \
            f"run.py: data.datamodule.path: feature file not found: {tmp_path / 'data' / 'thumos14.h5'}"
    elif case == "existing_file":
        args, task, expected = _prepare_existing(tmp_path), "prepare", \
            f"run.py: {tmp_path / 'data' / 'thumos14.h5'} exists; add data.prepare.overwrite=true"
    else:  # the checkpoint was trained with other settings
        ckpt = request.getfixturevalue("trained")
        args, task, expected = [*SMOKE, "seed=5", "model.network.pseudo_labels=false", "model.optimizer.lr=0.5",
                                f"ckpt_path={ckpt}"], "train", "resume with the same settings, start a new run, " \
            "or add resume_changes=allow"
        saved = {p: p.read_bytes() for p in ckpt.parents[1].rglob("*") if p.is_file() and p.name != ".issf.lock"}
    before = runs(tmp_path, task)
    out = run_py(*args, root=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout and "HYDRA_FULL_ERROR" not in out.stderr
    assert "Error executing job" not in out.stderr
    if case == "missing_file":  # a message with its own lines: the command that makes the file
        assert lines[-3] == expected and lines[-2] == "Create it with:"
        assert lines[-1].strip().startswith("python run.py task=prepare data=thumos14 data.prepare.folder=")
    else:
        assert lines[-1].startswith(expected), lines[-1]
    if case == "refused_resume":  # a message with its own lines: one per changed key
        assert lines[0] == f"run.py: resume from {ckpt}: the config differs from the one the checkpoint was " \
                           f"trained with in" and "  model.optimizer.lr: 0.001 -> 0.5" in lines
        assert saved == {p: p.read_bytes() for p in saved}  # the run's files as they were
    assert runs(tmp_path, task) == before  # the refused command left no run directory
    assert case == "existing_file" or not (tmp_path / "data").exists()  # nor any data


@pytest.mark.slow  # spawns `python run.py`
def test_hydra_full_error_shows_the_traceback(tmp_path):
    out = run_py(*SMOKE, "model.network.dropout=1.5", root=tmp_path, full_error=True)
    assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "ValueError: model.network.dropout: must be in [0, 1), got 1.5"


@pytest.mark.slow  # spawns python
def test_a_bug_keeps_hydra_s_traceback(tmp_path):
    script = ("import sys\nfrom issf.app import tasks\nfrom issf.app.main import cli\n"
              "def broken(cfg, out):\n    return {}['missing key']\n"
              "tasks.TASKS['verify'] = broken\n"
              f"sys.argv = ['run.py', 'task=verify', 'paths.root_dir={tmp_path}']\ncli()\n")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "KeyError: 'missing key'" in out.stderr and "run.py:" not in out.stderr


@pytest.mark.slow  # spawns `python run.py -m`
def test_a_sweep_runs_every_job_and_reports_each_refused_one(tmp_path):
    tiny = ["data.synthetic.num_train=4", "data.synthetic.num_test=2", "data.synthetic.feature_dim=8"]
    out = run_py("-m", "task=synthesize", *tiny, "print_config=maybe,false", root=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    job, message = last.split("): ", 1)
    assert job.startswith("run.py: job 0 (") and "print_config=maybe" in job
    assert message.startswith("print_config: must be true")
    assert (tmp_path / "data" / "synthetic_thumos.h5").is_file()  # job 1 ran
    assert "sweep directory:" in out.stdout


# ------------------------------------------------------------------ 3. hints name overrides


def test_prepare_errors_name_the_override_that_fixes_them(tmp_path):
    from tests.data.test_convert import write_per_video, write_wtalc

    folder = write_wtalc(tmp_path / "Toy-Annotations")
    base = ["task=prepare", "data=thumos14", f"data.prepare.folder={folder}"]
    with pytest.raises(ValueError, match=r"data\.prepare\.labels_from: must be video or segments, got 'frames'"):
        tasks.task_prepare(compose_cfg(tmp_path, *base, "data.prepare.labels_from=frames"), tmp_path / "out")
    with pytest.raises(ValueError, match=r"data\.prepare\.dtype: must be float16 or float32, got 'float64'"):
        tasks.task_prepare(compose_cfg(tmp_path, *base, "data.prepare.dtype=float64"), tmp_path / "out")
    fdir, gt = write_per_video(tmp_path / "src")
    per_video = ["task=prepare", "data=thumos14", "data.prepare.format=per_video", "~data.prepare.labels_from",
                 f"+data.prepare.feature_dir={fdir}", f"+data.prepare.annotation_file={gt}",
                 "+data.prepare.subset_map={train: train}", f"+data.prepare.splits={{train: {gt}}}"]
    with pytest.raises(ValueError, match=r"data\.prepare\.splits and data\.prepare\.subset_map: set one, not both.*"
                                         r"~data\.prepare\.subset_map"):
        tasks.task_prepare(compose_cfg(tmp_path, *per_video), tmp_path / "out")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['labels_form'\] for data\.prepare\.format=wtalc.*"
                                         r"~data\.prepare\.labels_form"):
        tasks.task_prepare(compose_cfg(tmp_path, *base, "+data.prepare.labels_form=video"), tmp_path / "out")


# ------------------------------------------------------------------ 4. the config an evaluation records


@pytest.mark.slow  # spawns `python run.py task=eval`
def test_an_evaluation_records_and_shows_the_checkpoint_s_config_with_its_overrides(tmp_path, trained):
    ckpt, data = trained, trained.parents[2] / "data" / "synthetic_smoke.h5"
    out = run_py("task=eval", f"ckpt_path={ckpt}", "data.evaluation.localization.max_detections=7", "logger=none",
                 "callbacks.plots=null", root=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [run] = runs(tmp_path, "eval")
    saved = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert saved["task"] == "eval" and saved["ckpt_path"] == str(ckpt)
    assert saved["seed"] == 5  # the run config the checkpoint was trained with ...
    assert saved["model"]["network"]["pseudo_labels"] is False and saved["model"]["network"]["embed_dim"] == 64
    assert saved["data"]["datamodule"]["path"] == str(data)
    for evaluation in (saved["data"]["evaluation"], saved["model"]["evaluation"]):  # ... with the overrides
        assert evaluation["localization"]["max_detections"] == 7
        assert evaluation["protocol"] == "anet"
    assert f"data: synthetic ({data})" in out.stdout
    assert "model.network: pseudo_labels=false" in out.stdout
    assert not (tmp_path / "data" / "synthetic_thumos.h5").exists()  # the default data was never needed


# ------------------------------------------------------------------ 5. task=synthesize says what it wrote


def test_synthesize_reports_what_it_wrote_and_whether_it_was_there(tmp_path, caplog):
    args = ["task=synthesize", "data.synthetic.num_train=6", "data.synthetic.num_test=3",
            "data.synthetic.feature_dim=16"]
    path = tmp_path / "data" / "synthetic_thumos.h5"
    with caplog.at_level(logging.INFO, logger="issf.app.tasks"):
        first = tasks.task_synthesize(compose_cfg(tmp_path, *args), tmp_path / "out")
        second = tasks.task_synthesize(compose_cfg(tmp_path, *args), tmp_path / "out")
    assert first["generated"] is True and second["generated"] is False
    assert first["videos"] == {"train": 6, "test": 3} and first["feature_dim"] == 16
    assert first["bytes"] == path.stat().st_size > 0
    reports = [r.getMessage() for r in caplog.records if r.name == "issf.app.tasks"]
    assert reports[0].startswith(f"data=synthetic: {path} generated now: 6 train / 3 test videos, 16-d features, ")
    assert reports[1].startswith(f"data=synthetic: {path} already there (these settings): 6 train / 3 test videos")
    assert reports[0].endswith("MiB on disk")
    with pytest.raises(ValueError, match=r"task=synthesize: data=thumos14 is not a built-in dataset.*task=prepare"):
        tasks.task_synthesize(compose_cfg(tmp_path, "task=synthesize", "data=thumos14"), tmp_path / "out")
