"""Reading ``.npy`` files from untrusted sources (W-TALC folders) without running code from them.

W-TALC stores its annotations and features as numpy object arrays, which ``np.load`` can only
read through :mod:`pickle`; a pickle may call any importable function (``os.system``...) while it
is read. :func:`load_npy` reads such files with a restricted unpickler instead:

* the ``.npy`` header is parsed with numpy's format functions; an array without Python objects
  is read by ``np.load(..., allow_pickle=False)`` (memory-mapped on request), never unpickled;
* an object array is unpickled by :class:`RestrictedUnpickler`, whose ``find_class`` resolves
  only the names in :data:`ALLOWED_GLOBALS` (what numpy needs to rebuild arrays, dtypes and
  scalars); any other global is refused before it is imported or called, and the error names it;
* the unpickled object must be the array the header describes (same shape and dtype).

Strings, numbers, lists, tuples and dicts are built by pickle opcodes, without any global.
Pickles written by Python 2 carry raw byte strings; they are decoded as ASCII, as ``np.load``
does, and as latin-1 (numpy's documented choice for Python 2 arrays) if that fails.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from issf.data.prepare.validate import PrepareError, PrepareFileNotFoundError, short_repr

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

__all__ = ["ALLOWED_GLOBALS", "ForbiddenGlobal", "RestrictedUnpickler", "load_npy"]

# (module, name) as written in the pickle -> the object it stands for. Nothing is imported by name.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # array reconstruction: numpy 1.x and Python 2 pickles (every real W-TALC file) ...
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    # ... and numpy >= 2 (files saved by a current numpy)
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # numpy scalars (np.float64, np.str_, np.bytes_ ...) inside lists: built from a dtype and raw bytes
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
}

_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that is not in :data:`ALLOWED_GLOBALS`."""

    def __init__(self, module: str, name: str):
        self.global_name = f"{module}.{name}"
        super().__init__(f"forbidden global {self.global_name}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (no import, no other callable)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not supported")


def load_npy(path: str | os.PathLike, *, field: str, mmap: bool = False) -> np.ndarray:
    """Read one ``.npy`` file without running code from it.

    Arrays without Python objects are read without pickle (memory-mapped with ``mmap``); object
    arrays are unpickled with :class:`RestrictedUnpickler`. Errors are :class:`PrepareError`
    naming ``path`` and ``field`` (:class:`PrepareFileNotFoundError` for a missing file); a refused
    payload names the forbidden global (e.g. ``posix.system``).
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise PrepareFileNotFoundError("file not found", file=path, field=field) from None
    except OSError as exc:
        raise PrepareError(f"cannot open ({exc.strerror or exc})", file=path, field=field) from None
    with f:
        try:
            version = npy_format.read_magic(f)
            reader = _HEADER_READERS.get(version)
            header = reader(f) if reader is not None else None
        except (ValueError, OSError, EOFError) as exc:
            raise PrepareError(f"cannot read .npy ({type(exc).__name__}: {exc})", file=path, field=field) from None
        if header is None or not header[2].hasobject:
            # no Python objects (or a format version only numpy's own reader knows): numpy
            # refuses object arrays itself when allow_pickle=False
            try:
                return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except Exception as exc:  # corrupt or truncated
                raise PrepareError(f"cannot read .npy ({type(exc).__name__}: {exc})",
                                   file=path, field=field) from None
        shape, _, dtype = header
        start = f.tell()
        try:
            try:
                array = RestrictedUnpickler(f, encoding="ASCII").load()
            except UnicodeDecodeError:  # a Python 2 pickle with raw (non-ASCII) byte strings
                f.seek(start)
                array = RestrictedUnpickler(f, encoding="latin1").load()
        except ForbiddenGlobal as exc:
            raise PrepareError(
                f"refused to unpickle: the file calls {exc.global_name}, which is not part of a numpy array "
                "(only numpy arrays, dtypes and scalars and plain Python values are accepted; "
                "the file may be malicious)", file=path, field=field) from None
        except RecursionError:
            raise PrepareError("cannot unpickle the object array (nested too deeply)", file=path,
                               field=field) from None
        except Exception as exc:  # truncated or corrupt pickle, bad arguments to an allowed global
            raise PrepareError(f"cannot unpickle the object array ({type(exc).__name__}: {exc})",
                               file=path, field=field) from None
    if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != dtype:
        got = (f"an array of shape {array.shape} and dtype {array.dtype}" if isinstance(array, np.ndarray)
               else f"{type(array).__name__} {short_repr(array)}")
        raise PrepareError(f"the pickled contents are {got}, not the array of shape {shape} and dtype {dtype} "
                           "that the .npy header describes", file=path, field=field)
    return array
