"""Hyper-parameter search with Optuna (``task=search``, set by ``hparams_search=issf_optuna``):
each trial is a normal training run (``python run.py ... task=train <trial's values>``) in its own
directory ``<search dir>/<trial>``, and its objective is the best validation figure of that run
(``optimized_metric`` on the training videos held out by ``data.datamodule.val_fraction``), never a
test figure. The search space is written in Hydra's sweep syntax (``interval``, ``tag(log, ...)``,
``choice``, ``range``), as for Hydra's Optuna sweeper."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, OmegaConf

from issf.analysis.report import read_metrics
from issf.app.overrides import task_overrides
from issf.utils.commands import hydra_value, override_arg, run_command
from issf.utils.io import atomic_write

log = logging.getLogger(__name__)

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"
RESULTS = "optimization_results"  # <search dir>/optimization_results.yaml and .md


def check_objective(cfg: DictConfig) -> None:
    """A run that reports an objective (``optimized_metric`` set) must measure it on held-out
    validation videos, with the checkpoint selected on that same metric (so the reported test is
    that of the checkpoint the objective scored)."""
    metric = cfg.get("optimized_metric")
    if not str(metric).startswith("val/"):
        raise ValueError(f"optimized_metric={metric}: the objective must be a validation metric; "
                         "set optimized_metric=val/AVG")
    if not OmegaConf.select(cfg, "data.datamodule.val_fraction", default=0):
        raise ValueError(f"optimized_metric={metric} needs held-out validation videos, but "
                         "data.datamodule.val_fraction is 0 (val/ would be the test split); "
                         "set data.datamodule.val_fraction=0.2")
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
    if monitor != metric:
        raise ValueError(f"optimized_metric={metric} differs from the checkpoint's selection metric "
                         f"callbacks.model_checkpoint.monitor={monitor}; set callbacks.model_checkpoint.monitor={metric}")


def check_search(cfg: DictConfig) -> None:
    """A search has a search space and a validation objective (:func:`check_objective`)."""
    if not OmegaConf.select(cfg, "search.params", default=None):
        raise ValueError("task=search needs a search space (search.params): add hparams_search=issf_optuna")
    check_objective(cfg)


def validation_score(metrics: dict[str, Any]) -> float | None:
    """A training run's objective: its best evaluation on the held-out validation videos
    (``val_best`` of metrics.json, the selection metric); None when it has none."""
    best = (metrics or {}).get("val_best") or {}
    if best.get("selected_on") != "val" or best.get("score") is None:
        return None
    return float(best["score"])


def objective(cfg: DictConfig, result: dict[str, Any] | None) -> float | None:
    """What :func:`issf.app.main.main` returns to a Hydra sweeper: the validation objective of a
    training run, or the best trial's of a search; None without ``optimized_metric``."""
    if not cfg.get("optimized_metric") or not result:
        return None
    if cfg.task == "search":
        return (result.get("best") or {}).get("val")
    return validation_score(result) if cfg.task == "train" else None


def distribution(name: str, spec: Any) -> Any:
    """The Optuna distribution of one search-space entry in Hydra's sweep syntax, or None for a
    fixed value (passed to every trial as it is)."""
    import optuna.distributions as d

    override = OverridesParser.create().parse_override(f"{name}={spec}")
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):  # int(interval(a, b))
            return d.IntDistribution(sweep.start, sweep.end, log=log_scale)
        return d.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    if isinstance(sweep, RangeSweep) and all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
        values = list(override.sweep_iterator())
        return d.IntDistribution(values[0], values[-1], step=sweep.step)
    if isinstance(sweep, (ChoiceSweep, RangeSweep)):
        return d.CategoricalDistribution(list(override.sweep_iterator()))
    if override.is_sweep_override():
        raise ValueError(f"search.params.{name}={spec}: use interval(a, b), tag(log, interval(a, b)), "
                         "int(interval(a, b)), choice(...) or range(...)")
    return None


def override_value(value: Any) -> str:
    """A trial's value as Hydra reads it back from the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    return hydra_value(value) if isinstance(value, str) else repr(value)


def trial_overrides(base: list[str], params: dict[str, Any]) -> list[str]:
    """A trial's command-line overrides: the search's own (without ``task=`` and ``search.*``, and
    without the searched keys), ``task=train`` and the trial's values."""
    searched = {k.lstrip("+~") for k in params}
    kept = [o for o in base if (key := o.split("=", 1)[0].lstrip("+~")) not in searched
            and key != "task" and not key.startswith("search.")]
    return [*kept, "task=train", *(f"{k}={override_value(v)}" for k, v in params.items())]


def run_trial(overrides: list[str], run_dir: Path) -> int:
    """One trial as a normal ``python run.py`` run in ``run_dir``; its exit status. A search stopped
    by a signal stops the trial the same way (SIGTERM: it exits with its resume command)."""
    command = [sys.executable, str(RUN_PY), *overrides, f"hydra.run.dir={hydra_value(str(run_dir))}"]
    with subprocess.Popen(command) as process:
        try:
            return process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise


def trial_record(number: int, params: dict[str, Any], overrides: list[str], run_dir: Path,
                 returncode: int, metric: str) -> dict[str, Any]:
    """What the results list of one trial: its values, validation and test figures, directory and command."""
    name = metric.split("/", 1)[1]
    path = run_dir / "metrics.json"
    metrics = (read_metrics(path) if path.is_file() else None) or {}
    val = validation_score(metrics)
    test = (metrics.get("test_val_selected") or {}).get(name)
    test_last = (metrics.get("test") or {}).get(name)
    return {"trial": number, "state": "COMPLETE" if returncode == 0 and val is not None else "FAIL",
            "params": params, "val": val, "test": test, "test_last_epoch": test_last,
            "run_dir": str(run_dir), "command": run_command(overrides)}


def write_results(folder: Path, summary: dict[str, Any]) -> None:
    """``optimization_results.yaml`` (best trial and all trials) and ``.md`` (the table)."""
    with atomic_write(folder / f"{RESULTS}.yaml", "w") as f:
        yaml.safe_dump(summary, f, sort_keys=False)
    with atomic_write(folder / f"{RESULTS}.md", "w") as f:
        f.write(results_markdown(summary))


def results_markdown(summary: dict[str, Any]) -> str:
    metric, trials = summary["optimized_metric"], summary["trials"]
    keys = list(summary["search_space"])
    name = metric.split("/", 1)[1]

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [f"Hyper-parameter search ({summary['direction']} `{metric}` on the validation videos, "
             f"data.datamodule.val_fraction={summary['val_fraction']}); test: `test_val_selected/{name}`, "
             f"the test of the checkpoint selected on validation.", ""]
    best = summary.get("best")
    if best:
        lines += [f"Best trial {best['trial']}: val {cell(best['val'])}, test {cell(best['test'])}; "
                  f"`{best['command']}`", ""]
    lines += ["| trial | state | " + " | ".join(f"`{k}`" for k in keys) + " | val | test | test (last epoch) |",
              "|---:|---|" + "---:|" * (len(keys) + 3)]
    for t in trials:
        cells = [cell(t["params"].get(k)) for k in keys] + [cell(t["val"]), cell(t["test"]), cell(t["test_last_epoch"])]
        lines.append(f"| {t['trial']} | {t['state']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_search(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run ``search.n_trials`` trials proposed by ``search.sampler``; after each trial the results
    files are rewritten (a stopped search keeps what it found). Returns the results summary."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise ModuleNotFoundError("task=search needs the optuna package: pip install -e '.[hpo]'") from None
    from hydra.utils import instantiate

    check_search(cfg)
    search, metric = cfg.search, cfg.optimized_metric
    params = {str(k): v for k, v in OmegaConf.to_container(search.params, resolve=True).items()}
    space = {k: dist for k, v in params.items() if (dist := distribution(k, v)) is not None}
    fixed = {k: v for k, v in params.items() if k not in space}
    base = task_overrides()
    if OmegaConf.select(cfg, "logger.wandb", default=None) is not None and not cfg.logger.wandb.get("group"):
        base = [*base, f"logger.wandb.group={hydra_value(output_dir.name)}"]  # one W&B group per search
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs its own line per trial
    study = optuna.create_study(direction=search.direction, sampler=instantiate(search.sampler))
    summary: dict[str, Any] = {
        "optimized_metric": metric, "direction": search.direction, "n_trials": search.n_trials,
        "sampler": OmegaConf.to_container(search.sampler, resolve=True), "val_fraction": cfg.data.datamodule.val_fraction,
        "search_space": params, "best": None, "trials": []}
    for number in range(search.n_trials):
        trial = study.ask(space)
        values = {**fixed, **trial.params}
        overrides = trial_overrides(base, values)
        run_dir = output_dir / str(number)
        log.info(f"trial {number}/{search.n_trials}: " + " ".join(f"{k}={override_value(v)}" for k, v in trial.params.items()))
        record = trial_record(number, values, overrides, run_dir, run_trial(overrides, run_dir), metric)
        if record["state"] == "COMPLETE":
            study.tell(trial, record["val"])
            log.info(f"trial {number}: {metric} {record['val']:.4f} (test {record['test']})")
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning(f"trial {number} failed (no {metric}); see {run_dir / 'run.log'}")
        summary["trials"].append(record)
        if any(t["state"] == "COMPLETE" for t in summary["trials"]):
            summary["best"] = copy.deepcopy(summary["trials"][study.best_trial.number])  # no YAML alias
        write_results(output_dir, summary)
    if summary["best"] is None:
        raise RuntimeError(f"every trial of the search failed; see {output_dir}/<trial>/run.log")
    best = summary["best"]
    log.info(results_markdown(summary) + f"\nresults: {output_dir / RESULTS}.yaml and .md; table of the runs: "
             + run_command(["task=report"], override_arg("dir", str(output_dir))))
    log.info(f"best trial {best['trial']}: {metric} {best['val']:.4f}, test {best['test']}; rerun: {best['command']}")
    return summary
