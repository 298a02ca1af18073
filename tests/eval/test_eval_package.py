"""issf.eval stands alone: scoring needs no model, LightningModule or pipeline."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

FORBIDDEN = ("issf.model", "issf.train.module", "issf.train.pipeline", "pytorch_lightning")


def test_eval_modules_import_nothing_of_the_model_module_or_pipeline():
    modules = sorted(p.stem for p in (ROOT / "issf" / "eval").glob("*.py") if p.stem != "__init__")
    assert {"detections", "localize", "functional", "metric", "classification", "error_analysis", "evaluator",
            "predictions"} <= set(modules)
    code = ("import sys\n" + "".join(f"import issf.eval.{m}\n" for m in modules)
            + f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_docstring_examples_run():
    import doctest

    import issf.eval.classification
    import issf.eval.metric

    failures, tried = doctest.testmod(issf.eval.metric, verbose=False)
    assert tried >= 4 and failures == 0
    failures, tried = doctest.testmod(issf.eval.classification, verbose=False)
    assert tried >= 3 and failures == 0
