"""Regenerate the compact reference data of ``data/reference/`` from the original files.

    python data/reference/build_reference.py [SOURCE]     # SOURCE defaults to ../shared beside the repository

SOURCE holds ``data/`` (the annotation files as copied from their public repositories) and
``fixtures/map``, ``fixtures/wtalc`` (evaluation cases with the expected values of the official
evaluators). Only the files that the tests and benchmarks read are kept:

* annotation ``.npy``/``.txt`` files of THUMOS'14 (W-TALC layout, small): copied byte for byte;
* larger annotation files: gzip of the unchanged bytes (decompress to get the original back);
* evaluation cases: the same JSON with its explanatory prose removed (descriptions, notes,
  generation procedures; ``PROVENANCE.md`` describes each case instead), written compactly and
  gzipped. Every number, input and expected value is kept as it is.

``MANIFEST.json`` lists every stored file with its source, the source's sha256 and the stored
file's sha256; ``tests/data/test_reference.py`` checks them. Output is deterministic (gzip without a
time stamp or file name), so re-running on the same sources gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[1].parent / "shared"

# stored path (relative to data/reference) -> (source path relative to SOURCE, form)
#   copy: byte-identical copy; gzip: gzip of the unchanged bytes; case: compacted evaluation case
_WTALC_NPY = ("classlist", "duration", "labels", "labels_all", "segments", "subset", "videoname")
ANNOTATIONS: dict[str, tuple[str, str]] = {
    **{f"thumos14/wtalc/{n}.npy": (f"data/thumos14/Thumos14reduced-Annotations/{n}.npy", "copy") for n in _WTALC_NPY},
    "thumos14/wtalc/Ambiguous_test.txt": ("data/thumos14/Thumos14reduced-Annotations/Ambiguous_test.txt", "copy"),
    "thumos14/basnet/gt.json.gz": ("data/thumos14/basnet/gt.json", "gzip"),
    "thumos14/basnet/split_train.txt": ("data/thumos14/basnet/split_train.txt", "copy"),
    "thumos14/basnet/split_test.txt": ("data/thumos14/basnet/split_test.txt", "copy"),
    "thumos14/acmnet/gt.json.gz": ("data/thumos14/acmnet/gt.json", "gzip"),
    **{f"activitynet13/wtalc/{n}.npy.gz": (f"data/activitynet13/ActivityNet1.3-Annotations_yhZhai/{n}.npy", "gzip")
       for n in _WTALC_NPY},
    "activitynet13/bsn/anet_anno_action.json.gz": ("data/activitynet13/bsn/anet_anno_action.json", "gzip"),
    "activitynet13/acmnet/split_train.txt.gz": ("data/activitynet13/acmnet/split_train.txt", "gzip"),
    "activitynet13/acmnet/split_test.txt.gz": ("data/activitynet13/acmnet/split_test.txt", "gzip"),
}
CASE_FOLDERS = ("fixtures/map", "fixtures/wtalc")

# explanatory text in the evaluation cases (string or list-of-string values under these keys, at
# any depth), dropped: PROVENANCE.md describes the cases instead
_PROSE = {
    "description", "covers", "notes", "note", "input_note", "official_unmodified_behaviour",
    "procedure", "annotation_procedure", "T_rule", "produced_by", "act_thresh_cas_expr",
    "snippets_per_second", "NOT_REFERENCE", "code", "conversion",
    "implementation", "entry_point", "port", "module", "environment",
}
# short wording of our own for the one prose field a test reads
_POLICY = "ignored: predictions of a label that has no ground truth are left out before scoring"
# where the real THUMOS'14 annotations that some cases refer to are kept (relative to data/reference)
THUMOS_WTALC = "thumos14/wtalc"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gzip_bytes(data: bytes) -> bytes:
    """gzip at level 9 with no file name and time stamp 0 (the same input gives the same bytes)."""
    import io

    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def _is_text(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _strip(obj: object, parent: str = "") -> object:
    if isinstance(obj, dict):
        return {k: _strip(v, k) for k, v in obj.items()
                if not (_is_text(v) and (k in _PROSE or (parent == "per_class_ap" and k == "label")))}
    if isinstance(obj, list):
        return [_strip(v, parent) for v in obj]
    return obj


def compact_case(case: dict) -> dict:
    """The evaluation case without its prose; data, inputs and expected values unchanged."""
    out = _strip(case)
    if "expected_policy" in out:
        out["expected_policy"] = _POLICY
    ann = out.get("annotations")
    if isinstance(ann, dict) and "location" in ann:
        ann["location"] = THUMOS_WTALC
    empty = out.get("expected", {}).get("getActLoc", {}).get("empty_positions")
    if empty:  # position -> how the official code leaves it empty (numpy array or plain list)
        out["expected"]["getActLoc"]["empty_positions"] = {
            k: "empty_array" if v.startswith("np.array") else "empty_list" for k, v in empty.items()}
    return out


def read_case(path: Path) -> dict:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def build(source: Path, out: Path) -> dict:
    missing = [rel for rel, _ in ANNOTATIONS.values() if not (source / rel).is_file()]
    missing += [folder for folder in CASE_FOLDERS if not (source / folder).is_dir()]
    if missing:
        raise SystemExit(f"not found under {source}: {', '.join(missing)}")
    manifest: dict[str, dict] = {}

    def store(rel: str, data: bytes, source_rel: str, source_bytes: bytes, form: str) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        manifest[rel] = {"source": source_rel, "form": form, "source_sha256": sha256(source_bytes),
                         "source_bytes": len(source_bytes), "sha256": sha256(data), "bytes": len(data)}

    for rel, (source_rel, form) in ANNOTATIONS.items():
        raw = (source / source_rel).read_bytes()
        store(rel, raw if form == "copy" else gzip_bytes(raw), source_rel, raw, form)
    for folder in CASE_FOLDERS:
        for path in sorted((source / folder).glob("*.json*")):
            stem = path.name.removesuffix(".gz").removesuffix(".json")
            text = json.dumps(compact_case(read_case(path)), separators=(",", ":"), ensure_ascii=False,
                              allow_nan=True)
            store(f"{folder}/{stem}.json.gz", gzip_bytes(text.encode()), f"{folder}/{path.name}",
                  path.read_bytes(), "case")
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE,
                        help=f"folder with data/ and fixtures/ (default: {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this folder)")
    args = parser.parse_args(argv)
    for sub in ("thumos14", "activitynet13", "fixtures"):  # stale files of an earlier layout go away
        shutil.rmtree(args.out / sub, ignore_errors=True)
    manifest = build(args.source.resolve(), args.out)
    total = sum(e["bytes"] for e in manifest.values())
    print(f"{len(manifest)} files, {total / 2**20:.2f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
