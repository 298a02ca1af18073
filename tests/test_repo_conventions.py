"""Repository conventions: the pre-commit hooks, `.env.example` listing every ISSF_* environment
variable the code reads, and the skip markers of tests/markers.py."""

from __future__ import annotations

import json
import re

import torch
import yaml

from tests import markers
from tests.markers import requires_gpu, requires_package
from tests.reference import ROOT

# an ISSF_ variable: a quoted name in Python (os.environ.get, a test's monkeypatch) or oc.env: in a config
_PY_NAME = re.compile(r"""["'](ISSF_[A-Z][A-Z0-9_]*)["']""")
_YAML_NAME = re.compile(r"oc\.env:(ISSF_[A-Z][A-Z0-9_]*)")


def variables_in_code() -> set[str]:
    names: set[str] = set()
    python = [ROOT / "run.py"]
    for folder in ("issf", "bench", "tests"):
        python += sorted((ROOT / folder).rglob("*.py"))
    for path in python:
        names |= set(_PY_NAME.findall(path.read_text()))
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        names |= set(_YAML_NAME.findall(path.read_text()))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        names |= set(_PY_NAME.findall("".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")))
    return names


def variables_in_env_example() -> dict[str, str]:
    """Each variable of .env.example and the comment line above it."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    listed = {}
    for above, line in zip(["", *lines], lines):
        if re.match(r"ISSF_[A-Z0-9_]+=", line):
            listed[line.split("=", 1)[0]] = above
    return listed


def test_env_example_lists_every_issf_variable_the_code_reads_with_a_comment():
    read = variables_in_code()
    assert {"ISSF_ROOT", "ISSF_WANDB_OFFLINE", "ISSF_HEAP_REUSE", "ISSF_RUN_DIR"} <= read  # the scan finds them
    listed = variables_in_env_example()
    assert sorted(read - set(listed)) == [], "read by the code, missing from .env.example"
    assert sorted(set(listed) - read) == [], "listed in .env.example, read nowhere"
    for name, comment in listed.items():
        assert comment.startswith("# ") and len(comment) > 10, f"{name}: no one-line comment above it"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def hooks() -> dict[str, dict[str, dict]]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return {repo["repo"]: {hook["id"]: hook for hook in repo["hooks"]} for repo in config["repos"]}


def test_pre_commit_runs_the_linters_and_the_file_checks():
    config = hooks()
    assert {"check-yaml", "end-of-file-fixer", "trailing-whitespace"} <= set(
        config["https://github.com/pre-commit/pre-commit-hooks"])
    ruff = config["https://github.com/astral-sh/ruff-pre-commit"]
    assert {"ruff-check", "ruff-format"} <= set(ruff)
    # the settings are pyproject.toml's [tool.ruff] (as `make lint`), none on the hook's command line
    assert not [a for a in ruff["ruff-check"].get("args", []) if a != "--fix"]
    assert "[tool.ruff]" in (ROOT / "pyproject.toml").read_text()
    nbstripout = config["https://github.com/kynan/nbstripout"]["nbstripout"]
    assert re.search(nbstripout["files"], "notebooks/analysis.ipynb")
    assert "--keep-id" in nbstripout["args"]  # tests/analysis/test_notebook.py finds cells by id
    assert re.search(yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["exclude"],
                     "data/reference/MANIFEST.json")  # checksummed reference files stay as they are


def marks_of(decorate) -> dict[str, object]:
    """The marks that ``decorate`` puts on a test function."""

    def test():  # pytest leaves lambdas unmarked
        pass

    return {m.name: m for m in decorate(test).pytestmark}


def test_requires_package_skips_when_a_package_is_missing_and_names_its_extra(monkeypatch):
    marks = marks_of(requires_package("json", "issf_no_such_package", "wandb"))
    assert "extra" in marks
    skip = marks["skipif"]
    assert skip.args == (True,)
    assert "issf_no_such_package" in skip.kwargs["reason"] and "json" not in skip.kwargs["reason"]
    assert marks_of(requires_package("json"))["skipif"].args == (False,)
    monkeypatch.setattr(markers, "_installed", lambda package: False)
    assert "pip install -e '.[hpo,wandb]'" in marks_of(requires_package("optuna", "wandb"))[
        "skipif"].kwargs["reason"]


def test_requires_gpu_skips_without_cuda():
    marks = marks_of(requires_gpu)
    assert "gpu" in marks and marks["skipif"].args == (not torch.cuda.is_available(),)


def test_the_markers_are_registered(request):
    names = {line.split(":", 1)[0] for line in request.config.getini("markers")}  # pyproject.toml's
    assert {"gpu", "extra", "slow"} <= names
