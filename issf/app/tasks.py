"""One function per task of ``python run.py task=...``; each takes the composed config and the run
directory and returns what the task produced (a metrics dictionary for train and eval)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from issf.app.build import (
    build_datamodule,
    build_module,
    build_prediction_datamodule,
    build_trainer,
    ensure_data,
    plain_config,
    validate_config,
)
from issf.app.ddp import teardown_ddp_children
from issf.app.overrides import command_overrides, evaluation_overrides, sweep_jobs, use_checkpoint_data
from issf.app.run_dir import carry_history
from issf.train.runtime import configure_for
from issf.utils.commands import override_arg, run_command

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process killed by it


def exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like an error, so files being written are cleaned up."""
    raise SystemExit(SIGTERM_EXIT_CODE)


def preflight(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The checks of ``task=train`` / ``task=eval`` / ``task=search`` that need no data: every value
    in range (:func:`validate_config`), a search's space and validation objective, and for a
    resume a usable checkpoint trained with the same settings (:mod:`issf.app.resume`).
    :func:`issf.app.main.main` runs them before it writes anything into the run directory. Returns
    what metrics.json records about the resume, and the resumed checkpoint (None without one)."""
    if cfg.get("task") not in ("train", "eval", "predict", "search"):
        return {}, None
    validate_config(cfg)
    if cfg.task in ("train", "eval"):
        refuse_unlabelled(cfg)  # a feature file without annotations, named on the command line
    if cfg.task == "search":
        from issf.app.search import check_search

        check_search(cfg)
    elif cfg.task == "train" and cfg.get("optimized_metric"):  # an objective is a validation figure
        from issf.app.search import check_objective

        check_objective(cfg)
    if cfg.task == "train" and cfg.get("ckpt_path"):
        from issf.app.resume import resume_provenance

        return resume_provenance(cfg)
    return {}, None


def task_train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from issf.train.checkpoints import check_checkpoint_fits, check_feature_identity
    from issf.train.pipeline import fit_and_test

    provenance, checkpoint = preflight(cfg)
    configure_for(str(cfg.trainer.get("accelerator", "cpu")))
    pl.seed_everything(cfg.seed, workers=True)
    ensure_data(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    if checkpoint is not None:
        check_checkpoint_fits(checkpoint, cfg.ckpt_path, module.hparams.num_classes, module.hparams.input_dim)
        provenance.update(check_feature_identity(
            checkpoint["hyper_parameters"].get("feature_checksum"), cfg.ckpt_path, datamodule.file.checksum,
            datamodule.file.path, bool(cfg.get("allow_other_features", False))))
        carry_history(Path(cfg.ckpt_path), output_dir)
    trainer = build_trainer(cfg)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Lightning's handler alone: it stops at the next step
    try:
        return fit_and_test(trainer, module, datamodule, output_dir, ckpt_path=cfg.get("ckpt_path"),
                            test=cfg.test_after_fit, provenance=provenance)
    except SIGTERMException:  # Lightning stops at the next step; last.ckpt holds the last whole epoch
        resume = output_dir / "checkpoints" / "last.ckpt"
        log.error(f"stopped by SIGTERM; resume with: {run_command(command_overrides(), override_arg('ckpt_path', str(resume)))}"
                  if resume.is_file() else "stopped by SIGTERM before the first epoch ended")
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    finally:
        signal.signal(signal.SIGTERM, exit_on_sigterm)
        teardown_ddp_children(trainer)


def task_eval(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    from issf.train.pipeline import evaluate_checkpoint, evaluate_detections_file, evaluate_predictions

    validate_config(cfg)
    if (cfg.get("ckpt_path") or cfg.get("predictions")) and not cfg.get("detections"):
        use_checkpoint_data(cfg)
    refuse_unlabelled(cfg)
    ensure_data(cfg)
    datamodule = build_datamodule(cfg)
    allow = bool(cfg.get("allow_other_features", False))
    if cfg.get("predictions"):
        return evaluate_predictions(cfg.predictions, datamodule, output_dir, evaluation_overrides(cfg), allow)
    if cfg.get("detections"):
        return evaluate_detections_file(cfg.detections, datamodule, dict(OmegaConf.to_container(
            cfg.data.evaluation, resolve=True)), output_dir)
    if not cfg.get("ckpt_path"):
        raise ValueError("task=eval needs ckpt_path=<checkpoint>, predictions=<run>/predictions.h5 or "
                         "detections=<results.json>")
    configure_for(str(cfg.trainer.get("accelerator", "cpu")))
    trainer = build_trainer(cfg)
    return evaluate_checkpoint(cfg.ckpt_path, trainer, datamodule, output_dir, evaluation_overrides(cfg), allow)


def refuse_unlabelled(cfg: DictConfig) -> None:
    """task=train and task=eval need ground truth: a feature file prepared without annotations, or
    the outputs of task=predict, stop them with one line naming the task=predict command to use."""
    from issf.data.h5 import is_labelled
    from issf.train.predict import PREDICT_SPLIT

    if cfg.get("predictions"):
        from issf.eval.predictions import read_predictions

        if read_predictions(cfg.predictions).split == PREDICT_SPLIT:
            raise ValueError(f"task=eval: {cfg.predictions} holds task=predict outputs, which have no ground truth "
                             f"to score against; re-localize them with: python run.py task=predict "
                             f"predictions={cfg.predictions}")
    path = cfg.data.datamodule.path
    if Path(path).is_file() and not is_labelled(path):
        raise ValueError(f"task={cfg.task}: {path} has no annotations (prepared with data.prepare.annotations=none) "
                         f"to {'train on' if cfg.task == 'train' else 'score against'}; localize actions in it "
                         f"with: python run.py task=predict "
                         f"ckpt_path={cfg.get('ckpt_path') or '<checkpoint>'} data.datamodule.path={path}")


def task_predict(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Localize actions in every video of ``data.datamodule.path`` with the checkpoint ``ckpt_path``
    (no ground truth, no metric), or re-localize a predict run's ``predictions=...``."""
    from issf.train.predict import predict_checkpoint, relocalize_predictions

    validate_config(cfg)
    if not (cfg.get("ckpt_path") or cfg.get("predictions")):
        raise ValueError("task=predict needs ckpt_path=<run>/checkpoints/<name>.ckpt with data.datamodule.path="
                         "<features.h5>, or predictions=<predict run>/predictions.h5")
    use_checkpoint_data(cfg)  # without data.* overrides: the checkpoint's (predictions') own feature file
    datamodule = build_prediction_datamodule(cfg)
    if cfg.get("predictions"):
        return relocalize_predictions(cfg.predictions, datamodule, output_dir, evaluation_overrides(cfg),
                                      bool(cfg.get("allow_other_features", False)))
    configure_for(str(cfg.trainer.get("accelerator", "cpu")))
    trainer = build_trainer(cfg)
    result = predict_checkpoint(cfg.ckpt_path, trainer, datamodule, output_dir, evaluation_overrides(cfg),
                                data=plain_config(cfg)["data"])
    log.info(f"other localization settings, without the network: python run.py task=predict "
             f"predictions={result['predictions']} data.evaluation.localization.<key>=<value>")
    return result


def task_synthesize(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Generate the built-in dataset of ``data=`` (a no-op when its file exists with these
    settings) and say what the file holds: videos per split, feature dimension, size on disk."""
    from collections import Counter

    from issf.data.h5 import FeatureFile

    if cfg.data.get("synthetic") is None and cfg.data.get("recordings") is None:
        hint = cfg.data.datamodule.get("prepare_hint") or "python run.py task=prepare data=<name>"
        raise ValueError(f"task=synthesize: data={cfg.data.get('name')} is not a built-in dataset (data=synthetic, "
                         f"synthetic_anet, synthetic_sparse, recordings are); prepare its features with: {hint}")
    made = ensure_data(cfg)
    path = Path(cfg.data.datamodule.path)
    file = FeatureFile(path)
    videos = dict(sorted(Counter(file.subsets.tolist()).items(), key=lambda item: (item[0] != "train", item[0])))
    size = path.stat().st_size
    log.info(f"data={cfg.data.get('name')}: {path} {'generated now' if made else 'already there (these settings)'}: "
             f"{' / '.join(f'{n} {subset}' for subset, n in videos.items())} videos, {file.feature_dim}-d "
             f"features, {size / 2**20:.1f} MiB on disk")
    return {"path": str(path), "generated": made, "videos": videos, "feature_dim": file.feature_dim, "bytes": size}


def task_verify(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Recompute the feature file's checksum and compare it with the one stored at prepare time."""
    from issf.data.h5 import FeatureFile

    path = cfg.data.datamodule.path
    checksum = FeatureFile(path).verify()
    log.info(f"{path}: content unchanged since it was prepared ({checksum})")
    return {"path": path, "checksum": checksum}


def task_prepare(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    from issf.data.prepare import prepare_from_config

    report = prepare_from_config(OmegaConf.to_container(cfg.data.prepare, resolve=True), cfg.data.datamodule.path)
    log.info(str(report))
    if not report.labelled:
        log.info(f"localize actions in it: python run.py task=predict ckpt_path=<run>/checkpoints/<name>.ckpt "
                 f"data.datamodule.path={cfg.data.datamodule.path}")
    return {"path": cfg.data.datamodule.path}


def task_report(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    from issf.analysis.report import write_report

    if not cfg.get("dir"):
        raise ValueError("task=report needs dir=<multirun directory>")
    report = write_report(cfg.dir, jobs=sweep_jobs(cfg.dir))
    log.info(f"wrote {Path(cfg.dir) / 'report.md'} and {Path(cfg.dir) / 'report.csv'}")
    if cfg.get("logger") and cfg.logger.get("wandb"):
        log_report_to_wandb(report, cfg, Path(cfg.dir))
    return report


def task_search(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Optuna search over ``search.params``, each trial a training run in ``<output_dir>/<trial>``
    (:mod:`issf.app.search`); the data are made or checked once, before the first trial."""
    from issf.app.search import run_search

    preflight(cfg)
    ensure_data(cfg)
    return run_search(cfg, output_dir)


def log_report_to_wandb(report: dict[str, Any], cfg: DictConfig, sweep_dir: Path) -> None:
    """The ablation table as a W&B table in the sweep's group (offline unless configured)."""
    import wandb

    w = cfg.logger.wandb
    run = wandb.init(project=w.project, group=sweep_dir.name, job_type="report", dir=str(sweep_dir),
                     mode="offline" if w.offline else "online", config={"sweep_dir": str(sweep_dir)})
    columns = ["configuration", "seeds"] + [f"{c} {s}" for c in report["columns"] for s in ("mean", "std")]
    rows = [[r["config"], r["n"]] + [x for c in report["columns"] for x in r["stats"][c]] for r in report["rows"]]
    run.log({"ablation": wandb.Table(columns=columns, data=rows)})
    run.finish()


def finish_wandb() -> None:
    """Close the W&B run of this job so the next multirun job starts its own (docs/framework.md, item 2)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


TASKS: dict[str, Callable[[DictConfig, Path], dict[str, Any]]] = {
    "train": task_train, "eval": task_eval, "synthesize": task_synthesize, "prepare": task_prepare,
    "verify": task_verify, "report": task_report, "predict": task_predict, "search": task_search,
}
