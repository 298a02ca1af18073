"""The reference data in data/reference: complete, intact, and reproducible by its build script."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from tests import reference

OWN_FILES = {"MANIFEST.json", "PROVENANCE.md", "build_reference.py"}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _build_module():
    spec = importlib.util.spec_from_file_location("build_reference", reference.REFERENCE / "build_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_matches_the_folder() -> None:
    stored = {
        p.relative_to(reference.REFERENCE).as_posix()
        for p in reference.REFERENCE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert OWN_FILES <= stored
    assert stored - OWN_FILES == set(reference.manifest())


@pytest.mark.parametrize("rel", sorted(reference.manifest()))
def test_stored_file_intact(rel: str) -> None:
    entry = reference.manifest()[rel]
    data = reference.path(rel).read_bytes()
    assert len(data) == entry["bytes"] and _sha256(data) == entry["sha256"], "stored file differs from MANIFEST"
    if entry["form"] == "copy":
        assert _sha256(data) == entry["source_sha256"]
    elif entry["form"] == "gzip":  # the original bytes come back
        assert _sha256(gzip.decompress(data)) == entry["source_sha256"]
    else:
        assert entry["form"] == "case" and isinstance(json.loads(gzip.decompress(data)), dict)


def test_thumos_annotations_are_those_the_cases_were_computed_on() -> None:
    checked = 0
    for name in reference.names(reference.WTALC_CASES, "*.json.gz"):
        ann = reference.case(reference.WTALC_CASES, name).get("annotations", {})
        if ann.get("source") != "thumos14_reduced":
            continue
        assert ann["location"] == "thumos14/wtalc"
        for file, digest in ann["sha256"].items():
            assert _sha256((reference.THUMOS_WTALC / file).read_bytes()) == digest, (name, file)
            checked += 1
    assert checked >= 6 * 4  # four cases on the real THUMOS'14 test split, six files each


def test_build_script_on_a_miniature_source(tmp_path: Path) -> None:
    """Every stored form from placeholder sources: copies, gzip round trip, cases without prose."""
    build = _build_module()
    source = tmp_path / "src"
    for rel, _ in build.ANNOTATIONS.values():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(rel.encode() * 3)
    case = {
        "name": "mini", "description": "words", "notes": ["more words"], "generator": {"seed": 3, "procedure": "how"},
        "reference": {"repository": "r", "commit": "c", "environment": "e"},
        "annotations": {"source": "thumos14_reduced", "location": "elsewhere", "note": "n"},
        "expected": {"mAP": [0.5, 0.25], "getActLoc": {"empty_positions": {"1": "np.array([]) ...", "2": "[] ..."}}},
        "derived_not_official": {"per_class_ap": {"ap": [1.0], "label": "text", "produced_by": "text"}},
        "predictions": {"label": ["a", "b"], "score": [0.1, 0.2]},
        "expected_policy": "theirs",
    }
    for folder in build.CASE_FOLDERS:
        (source / folder).mkdir(parents=True)
        (source / folder / "01_mini.json").write_text(json.dumps(case))
    out = tmp_path / "out"
    manifest = build.build(source, out)
    assert json.loads((out / "MANIFEST.json").read_text()) == manifest
    for rel, (source_rel, form) in build.ANNOTATIONS.items():
        data = (out / rel).read_bytes()
        assert (data if form == "copy" else gzip.decompress(data)) == (source / source_rel).read_bytes()
    compact = json.loads(gzip.decompress((out / "fixtures/map/01_mini.json.gz").read_bytes()))
    assert compact == {
        "name": "mini", "generator": {"seed": 3}, "reference": {"repository": "r", "commit": "c"},
        "annotations": {"source": "thumos14_reduced", "location": "thumos14/wtalc"},
        "expected": {"mAP": [0.5, 0.25], "getActLoc": {"empty_positions": {"1": "empty_array", "2": "empty_list"}}},
        "derived_not_official": {"per_class_ap": {"ap": [1.0]}},
        "predictions": {"label": ["a", "b"], "score": [0.1, 0.2]},
        "expected_policy": build._POLICY,
    }
    # deterministic: a second build gives the same bytes
    assert build.build(source, tmp_path / "again") == manifest
