"""Preparing a W-TALC folder never runs code from its .npy files (issue #20).

W-TALC files are numpy object arrays, i.e. pickles. :func:`issf.data.prepare.npy.load_npy` unpickles them
with an allow-list; these tests craft files whose pickle calls ``os.system("touch <marker>")`` and
check that prepare refuses them, names the forbidden global, runs nothing and writes nothing; that
the real THUMOS'14 / ActivityNet files and generated folders still load exactly as
``np.load(allow_pickle=True)`` loads them; and that malformed but harmless contents are reported
as PrepareError by file, video and field.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

import issf.data.prepare.wtalc as wtalc
from issf.app import tasks
from issf.data.prepare import PrepareError, WriterOptions, convert_wtalc, prepare_from_config
from issf.data.prepare.npy import ALLOWED_GLOBALS, RestrictedUnpickler, load_npy
from tests import reference
from tests.conftest import ROOT, compose_cfg
from tests.data.test_convert import D, _features, _listing, _obj, _video_table, write_wtalc
from tests.data.test_convert_real import THUMOS, _wtalc_features

SYSTEM = f"{os.system.__module__}.system"  # posix.system (nt.system on Windows)
FIELD_FILES = {
    "features": "Toy-I3D-JOINTFeatures.npy",
    "segments": "segments.npy",
    "labels": "labels.npy",
    "labels_all": "labels_all.npy",
    "classlist": "classlist.npy",
    "subset": "subset.npy",
    "videoname": "videoname.npy",
    "duration": "duration.npy",
}


class Touch:
    """Pickles as a call of os.system("touch <marker>")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_pickle_npy(path: Path, payload: bytes, shape: tuple[int, ...] = (4,)) -> None:
    """A valid .npy header for an object array of ``shape``, followed by ``payload``."""
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": shape})
        f.write(payload)


def _poison(folder: Path, field: str, marker: Path) -> Path:
    """Rewrite ``field``'s file of a toy W-TALC folder with one entry that runs ``touch marker``."""
    table = _video_table()
    entries = {
        "features": _features(table),
        "segments": [v["segments"] for v in table],
        "labels": [v["labels"] for v in table],
        "labels_all": [v["labels_all"] for v in table],
        "classlist": [b"Alpha", b"Beta", b"Gamma"],
        "subset": [v["subset"].encode() for v in table],
        "videoname": [v["id"].encode() for v in table],
        "duration": [[v["duration"]] for v in table],
    }[field]
    if field in ("segments", "labels"):
        entries[1] = [entries[1][0], Touch(marker)]  # nested inside a video's list
    else:
        entries[1] = Touch(marker)
    path = folder / FIELD_FILES[field]
    np.save(path, _obj(entries), allow_pickle=True)
    return path


# ----------------------------------------------------------------------------------------------
# code-running payloads are refused


def test_the_crafted_payload_is_live(tmp_path):
    """Positive control: the crafted file does run its command under np.load(allow_pickle=True)."""
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    marker = tmp_path / "marker"
    path = _poison(folder, "segments", marker)
    np.load(path, allow_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("field", list(FIELD_FILES))
def test_loader_refuses_code_in_every_wtalc_field(tmp_path, field):
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    marker = tmp_path / "marker"
    path = _poison(folder, field, marker)
    with pytest.raises(PrepareError) as info:
        load_npy(path, field=field)
    assert SYSTEM in str(info.value) and "refused to unpickle" in str(info.value)
    assert (info.value.file, info.value.field) == (str(path), field)
    assert not marker.exists()


@pytest.mark.parametrize("field", list(FIELD_FILES))
def test_prepare_refuses_code_in_every_wtalc_field(tmp_path, field):
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    marker = tmp_path / "marker"
    path = _poison(folder, field, marker)
    cfg = compose_cfg(tmp_path, "task=prepare", "data=thumos14", f"data.prepare.folder={folder}")
    with pytest.raises(PrepareError) as info:
        tasks.task_prepare(cfg, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: refused to unpickle: the file calls {SYSTEM}"), message
    assert not marker.exists()
    assert _listing(tmp_path / "data") == set(), "no output and no temporary file"


@pytest.mark.slow  # spawns `python run.py`
def test_run_py_prepare_refuses_a_whole_payload_that_runs_code(tmp_path):
    """The issue's case: segments.npy whose whole pickle is the call, through `python run.py task=prepare`."""
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    marker = tmp_path / "marker"
    _write_pickle_npy(folder / "segments.npy", pickle.dumps(Touch(marker), protocol=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    out = subprocess.run([sys.executable, "run.py", "task=prepare", "data=thumos14", f"data.prepare.folder={folder}",
                          f"paths.root_dir={tmp_path / 'root'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert f"PrepareError: {folder / 'segments.npy'}: segments: refused to unpickle: the file calls {SYSTEM}" \
        in out.stderr, out.stderr[-2000:]
    assert "TypeError" not in out.stderr
    assert not marker.exists()
    assert _listing(tmp_path / "root" / "data") == set()


def _py2_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


# raw pickles (protocols 0-4) that reach a global: each is refused by name, nothing runs
RAW_PAYLOADS = {
    "__builtin__.eval (Python 2, protocol 0)": (b"c__builtin__\neval\n(S'1'\ntR.", "__builtin__.eval"),
    "builtins.exec (protocol 2)": (b"\x80\x02" + _py2_global("builtins", "exec") + b"X\x01\x00\x00\x001\x85R.",
                                   "builtins.exec"),
    "copy_reg._reconstructor": (b"\x80\x02" + _py2_global("copy_reg", "_reconstructor") + b"N\x85R.",
                                "copy_reg._reconstructor"),
    "INST opcode": (b"(ios\nsystem\nS'true'\n.", "os.system"),
    "STACK_GLOBAL (protocol 4)": (b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x04true\x85R.", "posix.system"),
    "a numpy function outside the allow-list": (
        b"\x80\x02" + _py2_global("numpy.testing._private.utils", "runstring") + b"X\x04\x00\x00\x00passN\x86R.",
        "numpy.testing._private.utils.runstring"),
    "_codecs.encode": (b"\x80\x02" + _py2_global("_codecs", "encode") + b"X\x01\x00\x00\x00aX\x06\x00\x00\x00latin1"
                       b"\x86R.", "_codecs.encode"),
}


@pytest.mark.parametrize("name", list(RAW_PAYLOADS))
def test_loader_refuses_any_other_global(tmp_path, name):
    payload, forbidden = RAW_PAYLOADS[name]
    path = tmp_path / "x.npy"
    _write_pickle_npy(path, payload)
    with pytest.raises(PrepareError, match=re.escape(f"the file calls {forbidden},")):
        load_npy(path, field="labels")


def test_loader_reports_payloads_that_are_not_the_described_array(tmp_path):
    path = tmp_path / "segments.npy"
    _write_pickle_npy(path, pickle.dumps(0, protocol=2))
    with pytest.raises(PrepareError, match=r"segments.npy: segments: the pickled contents are int 0, not the "
                                           r"array of shape \(4,\) and dtype object"):
        load_npy(path, field="segments")
    np.save(path, _obj([[1.0, 2.0]] * 3), allow_pickle=True)
    with open(path, "rb") as f:
        assert npy_format.read_magic(f) == (1, 0)
        npy_format.read_array_header_1_0(f)
        payload = f.read()
    _write_pickle_npy(path, payload, shape=(4,))  # the header says 4 entries, the pickle holds 3
    with pytest.raises(PrepareError, match=r"an array of shape \(3,\) and dtype object, not the array of shape "
                                           r"\(4,\)"):
        load_npy(path, field="segments")
    _write_pickle_npy(path, b"\x80\x02]q\x00(K\x01")  # truncated
    with pytest.raises(PrepareError, match=r"segments: cannot unpickle the object array \(EOFError"):
        load_npy(path, field="segments")
    _write_pickle_npy(path, b"\x80\x02X\x01\x00\x00\x001Q.")  # persistent id
    with pytest.raises(PrepareError, match="persistent ids are not supported"):
        load_npy(path, field="segments")
    path.write_bytes(b"\x93NUMPY")
    with pytest.raises(PrepareError, match="segments.npy: segments: cannot read .npy"):
        load_npy(path, field="segments")


# ----------------------------------------------------------------------------------------------
# legitimate files load exactly as np.load(allow_pickle=True) loads them


def _assert_same(got, expected) -> None:
    assert type(got) is type(expected), (type(got), type(expected))
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if expected.dtype == object:
            for g, e in zip(got.ravel(), expected.ravel()):
                _assert_same(g, e)
        else:
            np.testing.assert_array_equal(got, expected)
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            _assert_same(g, e)
    else:
        assert got == expected


REAL_FILES = [("thumos14", n) for n in reference.names("thumos14/wtalc", "*.npy")] + [
    ("activitynet13", n.removesuffix(".gz")) for n in reference.names("activitynet13/wtalc", "*.npy.gz")]


@pytest.fixture(scope="module")
def anet(tmp_path_factory) -> Path:
    """A plain copy of the ActivityNet v1.3 W-TALC annotation files (stored gzipped)."""
    return reference.unpack("activitynet13/wtalc", tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def real_dirs(anet) -> dict[str, Path]:
    return {"thumos14": THUMOS, "activitynet13": anet}


@pytest.mark.parametrize("dataset,name", REAL_FILES, ids=[f"{d}/{n}" for d, n in REAL_FILES])
def test_real_annotation_files_load_as_with_np_load(real_dirs, dataset, name):
    path = real_dirs[dataset] / name
    _assert_same(load_npy(path, field=path.stem), np.load(path, allow_pickle=True))


def test_real_files_need_only_numpy_array_reconstruction(real_dirs):
    """The allow-list is what the real files need, plus the numpy >= 2 names and numpy scalars."""
    seen: set[tuple[str, str]] = set()

    class Recording(RestrictedUnpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    for dataset, name in REAL_FILES:
        with open(real_dirs[dataset] / name, "rb") as f:
            assert npy_format.read_magic(f) == (1, 0)
            if npy_format.read_array_header_1_0(f)[2].hasobject:
                Recording(f, encoding="ASCII").load()
    assert seen == {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}
    assert set(ALLOWED_GLOBALS) == seen | {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar")}


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
def test_generated_folders_load_as_with_np_load(tmp_path, as_bytes):
    table = _video_table()
    table[0]["labels"] = [np.str_("Alpha"), "Alpha"]  # numpy scalars pickle through numpy's `scalar`
    table[1]["segments"] = [[np.float64(0.5), 3.0], (5.0, np.float32(9.0))]
    folder = write_wtalc(tmp_path / "Toy-Annotations", table, as_bytes=as_bytes)
    for name in FIELD_FILES.values():
        _assert_same(load_npy(folder / name, field=name), np.load(folder / name, allow_pickle=True))
    mm = load_npy(folder / "duration.npy", field="duration", mmap=True)
    assert isinstance(mm, np.memmap) and mm.shape == (4, 1)


def _py2_str(b: bytes) -> bytes:
    """A Python 2 `str` in a protocol 2 pickle (SHORT_BINSTRING / BINSTRING)."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def _py2_array(shape: tuple[int, ...], code: bytes, endian: bytes, flags: int, data: bytes) -> bytes:
    """What Python 2 numpy pickled for one array (the structure of the real W-TALC files)."""
    dtype = (_py2_global("numpy", "dtype") + _py2_str(code) + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str(endian) + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(flags) + b"tb")
    return (_py2_global("numpy.core.multiarray", "_reconstruct") + _py2_global("numpy", "ndarray")
            + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
            + b"(" + _py2_int(1) + b"(" + b"".join(_py2_int(d) for d in shape) + b"t" + dtype + b"\x89" + data + b"tb")


def test_python2_feature_pickle_with_raw_byte_strings_loads(tmp_path):
    """A Python 2 features file (float data as byte strings, not ASCII) loads as latin-1, like numpy advises."""
    feats = [np.random.default_rng(0).standard_normal((t, 3)).astype(np.float32) for t in (5, 2, 7, 1)]
    assert any(max(x.tobytes()) > 127 for x in feats)
    inner = b"".join(_py2_array(x.shape, b"f4", b"<", 0, _py2_str(x.tobytes())) for x in feats)
    payload = b"\x80\x02" + _py2_array((4,), b"O8", b"|", 63, b"](" + inner + b"e") + b"."
    path = tmp_path / "Toy-I3D-JOINTFeatures.npy"
    _write_pickle_npy(path, payload)
    with pytest.raises(UnicodeError):  # numpy's default (ASCII) cannot read it
        np.load(path, allow_pickle=True)
    got = load_npy(path, field="features")
    _assert_same(list(got), feats)


# the converted files are the same as with the trusting loader (np.load(allow_pickle=True))


def _trusting_load_npy(path, *, field, mmap=False):
    return np.load(path, mmap_mode="r") if mmap else np.load(path, allow_pickle=True)


def _checksums(monkeypatch, folder: Path, out: Path, **kwargs) -> tuple[str, str]:
    safe = convert_wtalc(folder, out / "safe.h5", **kwargs).checksum
    with monkeypatch.context() as m:
        m.setattr(wtalc, "load_npy", _trusting_load_npy)
        trusting = convert_wtalc(folder, out / "trusting.h5", **kwargs).checksum
    return safe, trusting


def test_real_thumos_converts_as_before(tmp_path, monkeypatch):
    _wtalc_features(tmp_path / "th.npy", np.load(THUMOS / "duration.npy").reshape(-1), dim=4)
    safe, trusting = _checksums(monkeypatch, THUMOS, tmp_path / "th", feature_file=tmp_path / "th.npy")
    assert safe == trusting


@pytest.mark.slow
def test_real_activitynet_converts_as_before(tmp_path, monkeypatch, anet):
    _wtalc_features(tmp_path / "an.npy", np.load(anet / "duration.npy").reshape(-1), dim=2, dtype=np.float16)
    safe, trusting = _checksums(monkeypatch, anet, tmp_path / "an", feature_file=tmp_path / "an.npy",
                                writer=WriterOptions(dtype="float16"))
    assert safe == trusting


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
def test_generated_folders_convert_as_before(tmp_path, monkeypatch, as_bytes):
    folder = write_wtalc(tmp_path / "Toy-Annotations", as_bytes=as_bytes)
    safe, trusting = _checksums(monkeypatch, folder, tmp_path)
    assert safe == trusting


# ----------------------------------------------------------------------------------------------
# malformed but harmless contents: PrepareError by file, video and field


def _set(field: str, video: int, value):
    def mutate(table, feats, folder):
        table[video][field] = value
    return mutate


def _rewrite(name: str, entries: list):
    def mutate(table, feats, folder):
        np.save(folder / name, _obj(entries), allow_pickle=True)
    mutate.rewrites_a_file = True
    return mutate


def _feature(video: int, value):
    def mutate(table, feats, folder):
        feats[video] = value
    return mutate


def _plain(name: str, array: np.ndarray):
    def mutate(table, feats, folder):
        np.save(folder / name, array)
    mutate.rewrites_a_file = True
    return mutate


MALFORMED = {
    # name: (mutation, file, video, field, problem)
    "scalar segments": (_set("segments", 1, 5.0), "segments.npy", "vid_b", "segments",
                        "pairs of numbers; got float 5.0 instead of a list of pairs"),
    "flat segment": (_set("segments", 2, [2.0, 6.0]), "segments.npy", "vid_c", "segments", "interval 0 is 2.0"),
    "segments nested too deep": (_set("segments", 1, [[[0.5, 3.0]], [5.0, 9.0]]), "segments.npy", "vid_b",
                                 "segments", "interval 0 is [[0.5, 3.0]]"),
    "segment of three numbers": (_set("segments", 3, [[3.0, 4.0, 5.0], [8.0, 15.0]]), "segments.npy", "vid_d",
                                 "segments", "interval 0 is [3.0, 4.0, 5.0]"),
    "segment bound not a number": (_set("segments", 0, [[1.0, None], [10.0, 12.5]]), "segments.npy", "vid_a",
                                   "segments", "interval 0 is [1.0, None]"),
    "ragged labels": (_set("labels", 1, [["Beta", "Gamma"], "Gamma"]), "labels.npy", "vid_b", "labels",
                      "entry 0: expected a string, got list ['Beta', 'Gamma']"),
    "int label": (_set("labels_all", 2, 3), "labels_all.npy", "vid_c", "labels_all",
                  "expected a class name or a list of class names, got int 3"),
    "int among labels": (_set("labels", 3, ["Alpha", 2]), "labels.npy", "vid_d", "labels",
                         "entry 1: expected a string, got int 2"),
    "labels and segments differ in length": (_set("labels", 0, ["Alpha"]), "labels.npy", "vid_a", "labels",
                                             "1 segment labels for 2 segments"),
    "int subset": (_rewrite("subset.npy", [b"validation", b"validation", 7, b"test"]), "subset.npy", "vid_c",
                   "subset", "expected a string, got int 7"),
    "duration not a number": (_rewrite("duration.npy", [[32.0], ["long"], [16.0], [25.6]]), "duration.npy",
                              "vid_b", "duration", "expected a number, got ['long']"),
    "empty duration": (_rewrite("duration.npy", [[32.0], [20.0], [], [25.6]]), "duration.npy", "vid_c",
                       "duration", "expected a number, got []"),
    "ragged features": (_feature(1, [[0.0] * D, [0.0] * (D - 1)]), "Toy-I3D-JOINTFeatures.npy", "vid_b",
                        "features[1]", "not a numeric array"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_contents_name_file_video_and_field(tmp_path, name):
    mutate, file, video, field, problem = MALFORMED[name]
    table = _video_table()
    feats = _features(table)
    folder = tmp_path / "Toy-Annotations"
    if getattr(mutate, "rewrites_a_file", False):
        write_wtalc(folder, table, feats)
        mutate(table, feats, folder)
    else:
        mutate(table, feats, folder)
        write_wtalc(folder, table, feats)
    with pytest.raises(PrepareError) as info:
        prepare_from_config({"format": "wtalc", "folder": str(folder)}, tmp_path / "out" / "x.h5")
    err = info.value
    assert (Path(err.file).name, err.video, err.field) == (file, video, field), str(err)
    assert problem in err.problem, str(err)
    assert _listing(tmp_path / "out") == set()


# contents that belong to no video: named by file and field (with the entry's index)
WHOLE_FILE = {
    "int video name": (_rewrite("videoname.npy", [b"vid_a", b"vid_b", 7, b"vid_d"]), "videoname.npy",
                       "videoname[2]", "expected a string, got int 7"),
    "video name not UTF-8": (_plain("videoname.npy", np.asarray([b"vid_a", b"vid_\xff", b"vid_c", b"vid_d"])),
                             "videoname.npy", "videoname[1]", "not valid UTF-8"),
    "int class name": (_rewrite("classlist.npy", [b"Alpha", 1, b"Gamma"]), "classlist.npy", "classlist[1]",
                       "expected a string, got int 1"),
    "a scalar instead of a list": (_plain("labels_all.npy", np.asarray(5)), "labels_all.npy", "labels_all",
                                   "expected one entry per video, got a 0-d array"),
    "fewer entries than videos": (_rewrite("labels.npy", [["Alpha"]] * 3), "labels.npy", "labels",
                                  "3 entries, but videoname.npy has 4"),
    "features not one per video": (_rewrite("Toy-I3D-JOINTFeatures.npy", [np.zeros((3, D), np.float32)] * 5),
                                   "Toy-I3D-JOINTFeatures.npy", "features", "5 feature arrays"),
}


@pytest.mark.parametrize("name", list(WHOLE_FILE))
def test_malformed_files_name_file_and_field(tmp_path, name):
    mutate, file, field, problem = WHOLE_FILE[name]
    folder = write_wtalc(tmp_path / "Toy-Annotations")
    mutate(None, None, folder)
    with pytest.raises(PrepareError) as info:
        prepare_from_config({"format": "wtalc", "folder": str(folder)}, tmp_path / "out" / "x.h5")
    err = info.value
    assert (Path(err.file).name, err.field) == (file, field), str(err)
    assert problem in err.problem, str(err)
    assert _listing(tmp_path / "out") == set()
