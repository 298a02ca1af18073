"""The method's hyper-parameters: docs/hyperparameters.md (parsed here) against the composed config,
conf/model/issf.yaml itself, and the recipes thumos_full / thumos_official / anet_full."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from issf.model.saliency import select_salient
from tests.conftest import ROOT, compose_cfg

DOC = ROOT / "docs" / "hyperparameters.md"
RECIPES = ["thumos_full", "thumos_official", "anet_full"]


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Markdown tables under each '## ' heading: rows as {column: cell} (backticks stripped)."""
    out: dict[str, list[dict[str, str]]] = {}
    section, header = None, None
    for line in text.splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
            continue
        if not line.startswith("|"):
            header = None if not line.strip() else header
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            out.setdefault(section, []).append(dict(zip(header, cells)))
    return out


def parse_value(cell: str):
    value = yaml.safe_load(cell)
    if isinstance(value, str):
        try:
            return float(value)  # 5.0e-5 style numbers YAML 1.1 reads as strings
        except ValueError:
            return value
    return value


def same(actual, expected) -> bool:
    actual = OmegaConf.to_container(actual, resolve=True) if OmegaConf.is_config(actual) else actual
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return actual == expected and type(actual) is type(expected)
    return isinstance(actual, (int, float)) and not isinstance(actual, bool) and actual == pytest.approx(expected)


TABLES = tables(DOC.read_text())
METHOD = TABLES["Method (THUMOS'14)"]
RECIPE_ROWS = TABLES["Recipes"]


def test_the_tables_hold_the_methods_values():
    keys = {row["Config key"]: row["THUMOS'14 value"] for row in METHOD}
    # the values ISSF_SPEC.md 1.2 / 2.7 fixes, so that the table itself cannot drift
    for key, value in {"model.network.fusion_base": 0.6, "model.network.lamb": 0.12, "model.network.tau": 0.2,
                       "model.network.w_bg": 0.2, "model.network.w_att": 0.1, "model.network.w_pl": 1.0,
                       "model.network.w_pl_memory": 0.5, "model.network.memory_slots": 9,
                       "model.network.saliency_ratio": 0.5, "model.network.scale": 20.0}.items():
        assert parse_value(keys[key]) == value, key
    assert keys["code: select_salient"] == "floor(p*T) - 1"
    assert [r["Config key"] for r in RECIPE_ROWS] and set(RECIPES) <= set(RECIPE_ROWS[0])


def test_method_table_matches_the_thumos_full_config(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=thumos_full")
    for row in METHOD:
        key = row["Config key"]
        if key.startswith("code:"):
            continue
        actual = OmegaConf.select(cfg, key, throw_on_missing=True)
        assert same(actual, parse_value(row["THUMOS'14 value"])), (key, actual, row["THUMOS'14 value"])


def test_the_network_defaults_are_the_method():
    """The one source of the network's defaults (issf.model.config.NetworkSettings, the schema of
    model.network) holds the method's values; the YAML files set only what recipes change."""
    from issf.model.config import NetworkSettings

    defaults = NetworkSettings()
    checked = 0
    for row in METHOD:
        key = row["Config key"]
        if not key.startswith("model.network."):
            continue
        assert same(getattr(defaults, key.rsplit(".", 1)[1]), parse_value(row["THUMOS'14 value"])), key
        checked += 1
    assert checked >= 19
    raw = OmegaConf.load(ROOT / "conf" / "model" / "issf.yaml")
    assert set(raw.network) <= {"memory_background", "memory_read", "schedule_epochs"}, "restated defaults"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_table_matches_the_recipe(tmp_path, recipe):
    cfg = compose_cfg(tmp_path, f"experiment={recipe}")
    for row in RECIPE_ROWS:
        key = row["Config key"]
        actual = OmegaConf.select(cfg, key, throw_on_missing=True)
        assert same(actual, parse_value(row[recipe])), (recipe, key, actual, row[recipe])


def test_k_formula_of_the_table_is_what_the_saliency_selects():
    formula = next(r["THUMOS'14 value"] for r in METHOD if r["Config key"] == "code: select_salient")
    for p in (0.1, 0.5, 0.9):
        for t in (1, 2, 3, 4, 5, 9, 10, 37, 300):
            k = max(eval(formula, {"__builtins__": {}, "floor": math.floor}, {"p": p, "T": t}), 0)
            # increasing differences: the last K snippets are selected, plus one predecessor
            salient = select_salient(torch.arange(t, dtype=torch.float32)[None], torch.ones(1, t, dtype=torch.bool), p,
                                     wrap_last=False)
            assert int(salient.sum()) == (k + 1 if k else 0), (p, t)
