"""The reference data the tests and benchmarks read: ``data/reference/`` of this repository.

Real THUMOS'14 / ActivityNet v1.3 annotation files and evaluation cases with the expected values
of the official evaluators (sources and licences: ``data/reference/PROVENANCE.md``). Small files
are stored as they are, larger ones gzipped; :func:`unpack` gives a plain copy where a reader
needs one. Every stored file is listed in ``MANIFEST.json``; a missing one is an error, never a
reason to skip. Kept free of torch so that the benchmark processes can import it cheaply.
"""

from __future__ import annotations

import functools
import gzip
import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference"
MANIFEST = REFERENCE / "MANIFEST.json"

THUMOS_WTALC = REFERENCE / "thumos14" / "wtalc"  # W-TALC layout, stored as is (np.load works directly)
MAP_CASES = "fixtures/map"  # ActivityNet evaluator cases
WTALC_CASES = "fixtures/wtalc"  # official ISSF evaluation (getActLoc / getLocMAP / NMS) cases


@functools.cache
def manifest() -> dict[str, dict]:
    """Stored path (relative to ``data/reference``) -> source, form, sha256 and size."""
    return json.loads(MANIFEST.read_text())


def path(rel: str) -> Path:
    """``data/reference/<rel>``; raises when it is missing."""
    p = REFERENCE / rel
    if not p.exists():
        raise FileNotFoundError(f"reference file missing: {p} (rebuild with data/reference/build_reference.py)")
    return p


def names(folder: str, pattern: str = "*") -> list[str]:
    """File names under ``folder`` that the manifest lists, sorted (not a directory listing, so a
    lost file fails its test instead of silently shrinking a parametrization)."""
    prefix = folder.rstrip("/") + "/"
    found = sorted(rel[len(prefix):] for rel in manifest() if rel.startswith(prefix) and "/" not in rel[len(prefix):])
    return [n for n in found if fnmatch(n, pattern)]


def read_json(rel_or_path: str | Path) -> dict:
    """A JSON file (gzipped or not) given relative to ``data/reference`` or as a path."""
    p = rel_or_path if isinstance(rel_or_path, Path) else path(rel_or_path)
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "rt", encoding="utf-8") as f:
        return json.load(f)


def case(folder: str, name: str) -> dict:
    """Evaluation case ``name`` (without ``.json.gz``) of ``fixtures/map`` or ``fixtures/wtalc``."""
    return read_json(f"{folder}/{name.removesuffix('.gz').removesuffix('.json')}.json.gz")


def unpack(rel: str, dest: Path) -> Path:
    """A plain copy of a stored file or folder under ``dest`` (``.gz`` members decompressed, the
    suffix dropped); returns the copied file or folder."""
    src = path(rel)
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        out = dest / src.name
        out.mkdir(exist_ok=True)
        for member in names(rel):
            _unpack_file(src / member, out)
        return out
    return _unpack_file(src, dest)


def _unpack_file(src: Path, dest: Path) -> Path:
    if src.suffix == ".gz":
        out = dest / src.name[: -len(".gz")]
        with gzip.open(src, "rb") as fin, open(out, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    else:
        out = dest / src.name
        shutil.copyfile(src, out)
    return out
