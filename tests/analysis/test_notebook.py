"""notebooks/analysis.ipynb: executed on a tiny run (and a fake sweep); the tracked file has no outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from omegaconf import OmegaConf

from issf.app import tasks
from tests.conftest import compose_cfg
from tests.reference import ROOT

ROOT = ROOT
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A smoke training run laid out like a `python run.py` output directory."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(tmp, "experiment=smoke")
    out = tmp / "out"
    out.mkdir()
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # run.main writes it
    tasks.task_train(cfg, out)
    return out


@pytest.fixture
def kernel_env(tmp_path, monkeypatch) -> None:
    """A `python3` kernelspec running this interpreter (the venv's), found first through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("ISSF_SWEEP_DIR", raising=False)


def execute(cwd: Path) -> nbformat.NotebookNode:
    """Run the notebook (fails on the first cell error) plus a cell printing the kernel's Python."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)", id="which-python"))
    NotebookClient(nb, timeout=300, startup_timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode, cell_id: str) -> tuple[str, list[str]]:
    """Text (stdout and markdown) and the mime types of the outputs of one cell."""
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    text, kinds = "", []
    for out in cell.outputs:
        text += out.get("text", "") + out.get("data", {}).get("text/markdown", "")
        kinds += list(out.get("data", {}))
    return text, kinds


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_run(tiny_run, kernel_env, monkeypatch):
    monkeypatch.setenv("ISSF_RUN_DIR", str(tiny_run))
    nb = execute(ROOT)
    assert outputs(nb, "which-python")[0].strip() == sys.executable
    assert str(tiny_run) in outputs(nb, "setup")[0]
    table = outputs(nb, "metrics")[0]
    assert "last weights" in table and "whole-video baseline" in table and "mAP@0.5" in table
    assert outputs(nb, "timeline")[1].count("image/png") == 3  # VIDEOS = 3
    for cell_id in ("per-class", "errors", "curves"):
        assert "image/png" in outputs(nb, cell_id)[1], cell_id
    assert "SWEEP_DIR not set" in outputs(nb, "sweep")[0]


@pytest.mark.slow
def test_notebook_shows_a_sweep_table_from_notebooks_dir(tiny_run, kernel_env, monkeypatch, tmp_path):
    test = json.loads((tiny_run / "metrics.json").read_text())["test"]
    sweep = tmp_path / "multirun"
    for job, ablation in enumerate(["base", "full"]):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(f"- ablation={ablation}\n- seed=0\n")
        (sweep / str(job) / "metrics.json").write_text(json.dumps({"test": test}))
    monkeypatch.setenv("ISSF_RUN_DIR", str(tiny_run))
    monkeypatch.setenv("ISSF_SWEEP_DIR", str(sweep))
    nb = execute(ROOT / "notebooks")
    table = outputs(nb, "sweep")[0]
    assert "| ablation=base | 1 |" in table and "| ablation=full | 1 |" in table


def test_tracked_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert code[0].source.startswith("RUN_DIR = None")  # the parameters cell comes first
