"""End-to-end: tiny train + test through the real config (compose API), outputs exist and parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from issf.app import tasks
from issf.data.annotations import GroundTruth
from issf.data.h5 import FeatureFile
from issf.eval.detections import load_detections
from tests.conftest import compose_cfg
from tests.markers import requires_package
from tests.reference import ROOT

CONF = str(ROOT / "conf")


@pytest.mark.slow
def test_smoke_train_writes_all_outputs(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=smoke")
    out = tmp_path / "out"
    metrics = tasks.task_train(cfg, out)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["AVG(0.1:0.7)"] == pytest.approx(metrics["test"]["AVG(0.1:0.7)"])
    # a broken model fails these (6 epochs on 24 videos give cls_mAP ~88, AVG(0.1:0.5) ~3.6 vs ~1.5);
    # tests/model/test_learning.py measures learning quality proper
    assert saved["test"]["cls_mAP"] >= 70.0
    assert saved["test"]["AVG(0.1:0.5)"] > saved["test_baseline"]["AVG(0.1:0.5)"]
    assert {"mAP@0.1", "mAP@0.7", "AVG(0.1:0.5)", "AVG(0.3:0.7)", "cls_mAP"} <= set(saved["test"])
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert (out / "csv" / "metrics.csv").read_text().count("\n") > 1
    f = FeatureFile(tmp_path / "data" / "synthetic_smoke.h5")
    gt: GroundTruth = f.ground_truth("test")
    dets = load_detections(out / "detections.json", gt)
    assert len(dets) > 0 and dets.units == "seconds"


def test_typo_in_override_fails_at_composition(tmp_path):
    with pytest.raises(Exception, match="saliancy"):
        compose_cfg(tmp_path, "model.network.saliancy=false")


def test_every_experiment_composes(tmp_path):
    for name in sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml")):
        cfg = compose_cfg(tmp_path, f"experiment={name}")
        assert cfg.model.network.embed_dim > 0, name


@requires_package("hydra_plugins.hydra_submitit_launcher")
def test_slurm_launcher_composes_with_ddp(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                                 f"paths.root_dir={tmp_path}"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.nodes == 2
    assert cfg.trainer.strategy == "ddp"


def test_help_and_cfg_job_work():
    import subprocess
    import sys

    root = ROOT
    for args in (["--help"], ["--cfg", "job", "experiment=thumos_full"]):
        out = subprocess.run([sys.executable, "run.py", *args], cwd=root, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        if args == ["--help"]:
            assert "Tasks (task=...)" in out.stdout and "verify" in out.stdout and "experiment:" in out.stdout
    assert "thumos14.h5" in out.stdout and "protocol: wtalc" in out.stdout


def test_version_and_unknown_task_create_nothing(tmp_path):
    import subprocess
    import sys

    import issf

    root = ROOT
    out = subprocess.run([sys.executable, "run.py", "--version"], cwd=root, capture_output=True, text=True)
    assert out.stdout.strip() == f"issf {issf.__version__}"
    out = subprocess.run([sys.executable, "run.py", "task=trian", f"paths.root_dir={tmp_path}"], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "unknown task='trian'" in out.stderr and len(out.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_real_data_names_the_prepare_command(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=thumos_full")
    with pytest.raises(FileNotFoundError, match=r"python run.py task=prepare data=thumos14 data.prepare.folder="):
        tasks.task_train(cfg, tmp_path / "out")


def test_prepare_task_writes_the_feature_file_once(tmp_path):
    from tests.data.test_convert import write_wtalc

    folder = tmp_path / "Toy-Annotations"
    write_wtalc(folder)
    cfg = compose_cfg(tmp_path, "task=prepare", "data=thumos14", f"data.prepare.folder={folder}")
    tasks.task_prepare(cfg, tmp_path / "out")
    f = FeatureFile(tmp_path / "data" / "thumos14.h5")
    assert len(f) > 0 and f.checksum.startswith("sha256:")
    with pytest.raises(FileExistsError, match="overwrite"):
        tasks.task_prepare(cfg, tmp_path / "out")


def test_prepare_per_video_with_the_readme_overrides(tmp_path):
    from tests.data.test_convert import write_per_video

    feature_dir, annotation = write_per_video(tmp_path / "src")
    cfg = compose_cfg(
        tmp_path, "task=prepare", "data=thumos14", "data.prepare.format=per_video",
        f"+data.prepare.feature_dir={feature_dir}", f"+data.prepare.annotation_file={annotation}",
        "+data.prepare.annotation_format=activitynet", "~data.prepare.labels_from",
    )
    tasks.task_prepare(cfg, tmp_path / "out")
    assert len(FeatureFile(tmp_path / "data" / "thumos14.h5")) > 0


def test_detections_of_uniformly_sampled_test_videos_are_in_original_seconds(tmp_path):
    import numpy as np
    import torch

    from issf.data.annotations import GroundTruth
    from issf.eval.evaluator import EvaluationConfig, VideoEvaluator

    gt = GroundTruth(["a"], ["v0"], [64.0], [[16.0, 32.0]], [0], [0])  # 100 snippets of 0.64 s
    evaluator = VideoEvaluator(gt, EvaluationConfig(protocol="anet"), 0.64)
    cas = torch.zeros(1, 10, 1)
    cas[0, 2:5, 0] = 0.5  # sampled positions 2..4 of 10; each position stands for 10 snippets
    evaluator.update(torch.tensor([0]), torch.tensor([[0.9]]), cas, torch.tensor([10]), torch.tensor([10.0]))
    dets = evaluator.detections()
    best = np.argmax(dets.score)
    # compat +1 end: run [2, 5) -> [2, 6) positions -> snippets [20, 60) -> seconds [12.8, 38.4)
    assert (dets.start[best], dets.end[best]) == pytest.approx((12.8, 38.4))
