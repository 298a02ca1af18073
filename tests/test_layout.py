"""The package layout (issf/__init__.py): packages by layer, imports one way, small files, and only
the application imports Hydra."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.reference import ROOT

ISSF = ROOT / "issf"
# lowest first: a package may import itself and those before it
LAYERS = ["utils", "data", "eval", "model", "analysis", "train", "app"]
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for p in ISSF.rglob("*.py") if "__pycache__" not in p.parts)


def _package(path: Path) -> str | None:
    rel = path.relative_to(ISSF).parts
    return rel[0] if len(rel) > 1 else None


def _imports(path: Path) -> list[str]:
    """Every module name ``path`` imports (at any depth: function-level imports count too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_packages_are_the_layers_and_nothing_else_sits_at_the_root():
    packages = sorted(p.name for p in ISSF.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert packages == sorted(LAYERS)
    assert [p.name for p in ISSF.glob("*.py")] == ["__init__.py"]


@pytest.mark.parametrize("package", LAYERS)
def test_each_package_says_its_job_and_what_it_may_import(package):
    doc = ast.get_docstring(ast.parse((ISSF / package / "__init__.py").read_text(encoding="utf-8")))
    assert doc and "May import" in doc, package


def test_imports_go_one_way_down_the_layers():
    upward = []
    for path in _modules():
        here = _package(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "issf" or len(parts) < 2:
                continue
            target = parts[1]
            if target not in LAYERS:
                upward.append(f"{path.relative_to(ROOT)} imports {name}: not a package of issf")
            elif here is not None and LAYERS.index(target) > LAYERS.index(here):
                upward.append(f"{path.relative_to(ROOT)} ({here}) imports {name} ({target}, a higher layer)")
    assert upward == []


def test_only_the_application_imports_hydra():
    offenders = [f"{p.relative_to(ROOT)}: {n}" for p in _modules() if _package(p) != "app"
                 for n in _imports(p) if n.split(".")[0] in ("hydra", "omegaconf")]
    assert offenders == []


def test_no_file_is_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_run_py_is_a_thin_shim():
    lines = (ROOT / "run.py").read_text().splitlines()
    assert len(lines) <= 60
    assert not [n for n in ast.walk(ast.parse("\n".join(lines))) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]


def test_nothing_refers_to_the_main_script():
    hits = [str(p.relative_to(ROOT)) for p in [*(ROOT / "conf").rglob("*.yaml"), *(ROOT / "tests").rglob("*.py")]
            if "__main__." in p.read_text() and p.name != "test_layout.py"]
    assert hits == []
