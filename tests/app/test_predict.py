"""``task=predict``: detections without ground truth, through the real config and task dispatch.

The acceptance check: a tiny trained model's ``task=eval`` detections on the labelled test videos
equal, video by video, its ``task=predict`` detections on the same features prepared without
annotations (per-video ``.npy`` files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from issf.app import overrides, tasks
from issf.data.h5 import FeatureFile
from issf.eval.predictions import read_predictions
from issf.train.checkpoints import CheckpointError
from tests.conftest import compose_cfg

QUIET = ("logger=none", "callbacks.plots=null", "print_config=false")


def run_task(root: Path, out: Path, *args: str) -> dict[str, Any]:
    """``python run.py <args>`` writing into ``out``: the composed config, and the command line's
    overrides as the tasks read them (which data a checkpoint is used with, evaluation overrides)."""
    cfg = compose_cfg(root, *args, f"paths.output_dir={out}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(overrides, "task_overrides", lambda: list(args))
        return tasks.TASKS[cfg.task](cfg, out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A smoke model (6 epochs on 24 videos): the folder it lives in and its last checkpoint."""
    root = tmp_path_factory.mktemp("predict")
    run_task(root, root / "train", "experiment=smoke", "test_after_fit=false", *QUIET)
    return root, root / "train" / "checkpoints" / "last.ckpt"


def write_videos(file: FeatureFile, folder: Path, subset: str = "test", dim: int | None = None) -> Path:
    """The subset's videos as ``<video id>.npy`` files and their durations as ``durations.json``."""
    folder.mkdir(parents=True)
    durations = {}
    for v in file.indices(subset):
        x = file.features(v)
        np.save(folder / f"{file.video_ids[v]}.npy", x if dim is None else np.resize(x, (len(x), dim)))
        durations[file.video_ids[v]] = float(file.durations[v])
    (folder.parent / "durations.json").write_text(json.dumps(durations))
    return folder


def prepare_unlabelled(root: Path, folder: Path, path: Path) -> None:
    run_task(root, root / f"prepare_{path.stem}", "task=prepare", "data=thumos14", "data.prepare.format=per_video",
             "data.prepare.annotations=none", f"+data.prepare.feature_dir={folder}",
             f"+data.prepare.durations={folder.parent / 'durations.json'}", f"data.datamodule.path={path}")


@pytest.mark.slow
def test_predict_on_unlabelled_features_gives_the_detections_of_eval(trained):
    root, ckpt = trained
    labelled = FeatureFile(root / "data" / "synthetic_smoke.h5")
    unlabelled = root / "data" / "mine.h5"
    prepare_unlabelled(root, write_videos(labelled, root / "npy" / "videos"), unlabelled)
    assert FeatureFile(unlabelled).labelled is False

    run_task(root, root / "eval", "task=eval", f"ckpt_path={ckpt}", *QUIET)
    result = run_task(root, root / "predict", "task=predict", f"ckpt_path={ckpt}", f"data.datamodule.path={unlabelled}",
                      *QUIET)
    evaluated = json.loads((root / "eval" / "detections.json").read_text())["results"]
    predicted = json.loads((root / "predict" / "detections.json").read_text())["results"]
    test_ids = [labelled.video_ids[v] for v in labelled.indices("test")]
    assert list(predicted) == test_ids and list(evaluated) == test_ids
    for video in test_ids:
        assert predicted[video] == evaluated[video], video  # labels, scores, segments: all equal
    total = sum(len(d) for d in predicted.values())
    assert total > 0 and result["detections"] == total and result["videos"] == len(test_ids)
    assert {d["label"] for d in predicted.values() for d in d} <= set(labelled.class_names)
    assert not (root / "predict" / "metrics.json").exists()  # nothing to score

    # predictions.h5 as eval writes it: the same per-video outputs, the classes and settings of the checkpoint
    stored, scored = (read_predictions(root / d / "predictions.h5") for d in ("predict", "eval"))
    assert stored.video_ids == scored.video_ids and stored.class_names == scored.class_names
    np.testing.assert_array_equal(stored.cas, scored.cas)
    assert stored.evaluation == scored.evaluation and stored.split == "predict"

    # post-processing again without the network: the same detections, other ones with an override
    run_task(root, root / "again", "task=predict", f"predictions={root / 'predict' / 'predictions.h5'}", *QUIET)
    assert json.loads((root / "again" / "detections.json").read_text())["results"] == predicted
    run_task(root, root / "nms", "task=predict", f"predictions={root / 'predict' / 'predictions.h5'}",
             "data.evaluation.localization.nms_threshold=0.05", *QUIET)
    assert json.loads((root / "nms" / "detections.json").read_text())["results"] != predicted

    # task=eval has nothing to score in either: one line pointing to task=predict
    for args in ([f"ckpt_path={ckpt}", f"data.datamodule.path={unlabelled}"],
                 [f"predictions={root / 'predict' / 'predictions.h5'}"]):
        with pytest.raises(ValueError, match="python run.py task=predict") as err:
            run_task(root, root / "refused", "task=eval", *args, *QUIET)
        assert "\n" not in str(err.value)
    assert not (root / "refused").exists()


@pytest.mark.slow
def test_predict_refuses_features_of_another_dimension(trained):
    root, ckpt = trained
    labelled = FeatureFile(root / "data" / "synthetic_smoke.h5")
    narrow = root / "data" / "narrow.h5"
    prepare_unlabelled(root, write_videos(labelled, root / "npy32" / "videos", dim=32), narrow)
    with h5py.File(narrow, "r") as f:
        assert f.attrs["feature_dim"] == 32 and labelled.feature_dim == 64
    with pytest.raises(CheckpointError, match=r"32-dimensional features, but checkpoint .*last\.ckpt was trained on "
                                              r"64-dimensional ones \(its input_dim\)"):
        run_task(root, root / "narrow", "task=predict", f"ckpt_path={ckpt}", f"data.datamodule.path={narrow}", *QUIET)
    assert not (root / "narrow" / "detections.json").exists()


def test_predict_needs_a_checkpoint_and_an_existing_file(tmp_path):
    with pytest.raises(ValueError, match="task=predict needs ckpt_path="):
        run_task(tmp_path, tmp_path / "out", "task=predict")
    with pytest.raises(FileNotFoundError, match=r"data.prepare.annotations=none .* data.datamodule.path=.*none\.h5"):
        run_task(tmp_path, tmp_path / "out", "task=predict", "ckpt_path=x.ckpt", f"data.datamodule.path={tmp_path}/none.h5")


def test_train_and_eval_refuse_a_file_without_annotations(tmp_path):
    from issf.data.prepare import convert_unlabelled_per_video

    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "a.npy", np.ones((5, 64), np.float32))
    path = convert_unlabelled_per_video(tmp_path / "npy", tmp_path / "mine.h5").path
    for task in ("train", "eval"):
        with pytest.raises(ValueError, match=rf"task={task}: .*mine\.h5 has no annotations .* python run.py "
                                             rf"task=predict ckpt_path=<checkpoint> data.datamodule.path=") as err:
            run_task(tmp_path, tmp_path / task, f"task={task}", "experiment=smoke", f"data.datamodule.path={path}")
        assert "\n" not in str(err.value)
    assert not (tmp_path / "data").exists()  # nothing generated or trained
