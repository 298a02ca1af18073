"""DDP on CPU (2 forked processes) and exact resume, through the real config."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from issf.app import build, overrides, tasks
from tests.conftest import compose_cfg
from tests.reference import ROOT


class DumpMemory(pl.Callback):
    """Saves each rank's memory buffers at the end of fitting, with the number of memory reads in
    training steps and the memory as the initialisation pass left it."""

    def __init__(self, path: str):
        self.path = path
        self.reads = 0
        self.after_init = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = pl_module.net
        branch = net.memory_branch

        def counting(*args, **kwargs):
            self.reads += int(net.training)
            return branch(*args, **kwargs)

        net.memory_branch = counting

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mem = pl_module.net.memory
        if self.after_init is None and bool(mem.initialized):
            self.after_init = mem.slots.detach().cpu().clone()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mem = pl_module.net.memory
        torch.save({"slots": mem.slots.cpu(), "scores": mem.scores.cpu(), "reads": self.reads,
                    "after_init": self.after_init}, f"{self.path}/memory_rank{trainer.global_rank}.pt")


class StopAfter(pl.Callback):
    """Simulates a crash: stop once ``epochs`` epochs are done (the last checkpoint stays)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.slow
@pytest.mark.parametrize("read,background", [("class0", False), ("all_classes", False), ("shared", False),
                                             ("gt_classes", True)])  # the memory update paths
def test_ddp_cpu_memory_identical_on_ranks_and_metric_equals_single_process(tmp_path, read, background):
    out = tmp_path / "out"
    out.mkdir(parents=True)
    memory = (f"model.network.memory_read={read}", f"model.network.memory_background={background}")
    cfg = compose_cfg(tmp_path, "experiment=smoke", "trainer=ddp_cpu", "trainer.max_epochs=3", *memory,
                      "+callbacks.dump._target_=tests.train.test_ddp_resume.DumpMemory", f"+callbacks.dump.path={out}")
    tasks.task_train(cfg, out)
    m0 = torch.load(out / "memory_rank0.pt", weights_only=True)
    m1 = torch.load(out / "memory_rank1.pt", weights_only=True)
    # the memory was read in training steps on both ranks (smoke: initialised after epoch 0, read in
    # epochs 1 and 2, 3 batches per rank and epoch) and updated by them after the initialisation
    assert m0["reads"] == m1["reads"] == 2 * 3
    assert m0["after_init"] is not None and not torch.equal(m0["slots"], m0["after_init"])
    assert torch.equal(m0["slots"], m1["slots"]) and torch.equal(m0["scores"], m1["scores"])
    saved = json.loads((out / "metrics.json").read_text())
    ddp_metrics = saved["test"]
    # the main process reports what the ranks trained: epochs, best evaluation, the CSV history
    assert saved["epochs"] == 3 and saved["val_best"]["epoch"] in (0, 1, 2) and saved["val_best"]["score"] > 0
    from issf.eval.predictions import read_predictions

    stored = read_predictions(out / "predictions.h5")  # the ranks' test videos, each once
    assert stored.video_index.tolist() == list(range(12))
    history = (out / "csv" / "metrics.csv").read_text()
    assert history.count("\n") >= 1 + 3 + 1 + 2 and "train/loss_total" in history.splitlines()[0]  # train, val, test rows

    # the same weights evaluated by one process give the same numbers
    single_out = tmp_path / "single"
    cfg1 = compose_cfg(tmp_path, "experiment=smoke", f"paths.output_dir={single_out}", *memory)
    cfg1.ckpt_path = str(out / "checkpoints" / "last.ckpt")
    cfg1.task = "eval"
    single = tasks.task_eval(cfg1, single_out)["test"]
    # the DDP run's "test" figure is on its last weights, i.e. last.ckpt
    assert single == pytest.approx(ddp_metrics, abs=1e-9)


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    full_out = tmp_path / "full"
    tasks.task_train(compose_cfg(tmp_path, "experiment=smoke", f"paths.output_dir={full_out}"), full_out)

    cut_out = tmp_path / "cut"
    cut = compose_cfg(tmp_path, "experiment=smoke", f"paths.output_dir={cut_out}",
                      "+callbacks.stop._target_=tests.train.test_ddp_resume.StopAfter", "+callbacks.stop.epochs=3")
    tasks.task_train(cut, cut_out)
    last = cut_out / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)  # checkpoints hold tensors and plain Python only
    assert state["global_step"] < 6 * 6 and "RNGStateCallback" in state["callbacks"]

    resumed_out = tmp_path / "resumed"
    resumed = compose_cfg(tmp_path, "experiment=smoke", f"paths.output_dir={resumed_out}", f"ckpt_path={last}")
    tasks.task_train(resumed, resumed_out)

    full = json.loads((full_out / "metrics.json").read_text())
    again = json.loads((resumed_out / "metrics.json").read_text())
    assert again["test"] == pytest.approx(full["test"], abs=1e-9)
    a = torch.load(full_out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed_out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in ("net.memory.slots", "net.memory.scores", "net.embedding.linear.weight"):
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_eval_of_checkpoint_reproduces_training_test_metrics(tmp_path):
    out = tmp_path / "train"
    tasks.task_train(compose_cfg(tmp_path, "experiment=smoke", f"paths.output_dir={out}"), out)
    logged = json.loads((out / "metrics.json").read_text())["test"]
    eval_out = tmp_path / "eval"
    cfg = compose_cfg(tmp_path, "experiment=smoke", "task=eval", f"paths.output_dir={eval_out}",
                      f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    evaluated = tasks.task_eval(cfg, eval_out)["test"]
    assert evaluated == pytest.approx(logged, abs=1e-12)
    # its plots are named by the checkpoint's epoch, as those of the training run's test
    epoch = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    trained = {p.name for p in (out / "plots").glob("test_epoch*") if "map_curves" not in p.name}  # curves: CSV
    assert trained and {p.name for p in (eval_out / "plots").glob("test_epoch*")} >= trained
    assert all(name.startswith(f"test_epoch{epoch:03d}_") for name in trained)
    # without experiment=smoke: the checkpoint's own data, and no default dataset generated
    cfg = compose_cfg(tmp_path, "task=eval", f"paths.output_dir={eval_out}", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    assert tasks.task_eval(cfg, eval_out)["test"] == pytest.approx(logged, abs=1e-12)
    assert sorted(p.name for p in (tmp_path / "data").glob("*.h5")) == ["synthetic_smoke.h5"]
    # a command-line evaluation override is honoured, reported, and changes the figures
    override = "data.evaluation.localization.max_detections=1"
    cfg = compose_cfg(tmp_path, "experiment=smoke", "task=eval", f"paths.output_dir={eval_out}", override,
                      f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    changes = overrides.evaluation_overrides(cfg, [override, "seed=3"])
    assert changes == {"localization.max_detections": 1}
    from issf.train.pipeline import evaluate_checkpoint

    rescored = evaluate_checkpoint(cfg.ckpt_path, build.build_trainer(cfg), build.build_datamodule(cfg), eval_out, changes)
    saved = json.loads((eval_out / "metrics.json").read_text())
    assert saved["evaluation"]["localization"]["max_detections"] == 1
    assert saved["evaluation_overrides"] == changes
    assert rescored["test"] != pytest.approx(logged, abs=1e-6)
    # and the exported detections score the same through task=eval detections=...
    det_out = tmp_path / "dets"
    cfg = compose_cfg(tmp_path, "experiment=smoke", "task=eval", f"paths.output_dir={det_out}",
                      f"detections={out / 'detections.json'}")
    from_file = tasks.task_eval(cfg, det_out)["test"]
    for key, value in logged.items():
        if key != "cls_mAP":
            assert from_file[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.slow
def test_hydra_multirun_with_subprocess_ddp(tmp_path):
    """Real `strategy=ddp` (children re-launched through the command line) inside a multirun."""
    import os
    import subprocess
    import sys

    root = ROOT
    sweep = tmp_path / "sweep"
    env = {**os.environ, "ISSF_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    for key in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "run.py", "-m", "experiment=smoke", "trainer=ddp_cpu", "trainer.strategy=ddp",
           "trainer.max_epochs=2", "callbacks.plots=null", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]  # no second sweep started by a child
    tests = {job: json.loads((sweep / job / "metrics.json").read_text())["test"] for job in jobs}
    for job, test in tests.items():
        assert {f"mAP@0.{i}" for i in range(1, 8)} | {"AVG(0.1:0.5)", "cls_mAP"} <= set(test), job
        assert all(0.0 <= v <= 100.0 for v in test.values()), test
    # each job trained with its own seed. (Two smoke epochs do not separate a trained model from an
    # untrained one: cls_mAP 61-65 vs 52-62, AVG(0.1:0.5) at the whole-video baseline; learning
    # quality is tests/model/test_learning.py's and test_pipeline's smoke run's job.)
    assert tests["0"] != tests["1"]
    assert out.stderr.count("Launching 2 jobs locally") + out.stdout.count("Launching 2 jobs locally") == 1
