"""Readers for the two on-disk formats the real datasets come in.

* IDX, the raw format of MNIST and Fashion-MNIST (optionally gzip-compressed): a
  4-byte magic number ``0x00 0x00 <type code> <ndim>``, then ``ndim`` big-endian
  uint32 dimension sizes, then the values in C order.
* The "python version" of CIFAR-10/100 that torchvision uses: Python 2 pickles of a
  dict with ``b"data"`` (uint8 array N x 3072) and ``b"labels"`` /
  ``b"fine_labels"``. They are read with a restricted unpickler that only builds
  plain containers and numpy arrays, so a crafted file cannot run code.

Both readers raise :class:`DatasetFormatError` naming the file and what is wrong.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

import numpy as np

from flextrain.data.errors import DatasetFormatError

#: IDX type codes (third magic byte) and the big-endian numpy dtype they denote.
IDX_DTYPES: Final[dict[int, str]] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_bytes(path: Path) -> bytes:
    """Read a file, transparently decompressing it when its name ends in ``.gz``."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(f"{path}: not a complete gzip file ({e})") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (plain or ``.gz``) into a numpy array of native byte order.

    Checks the magic number, the type code, that the data size matches the
    dimensions exactly (neither truncated nor with trailing bytes).
    """
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise DatasetFormatError(
            f"{path}: bad magic number 0x{data[:4].hex()} (an IDX file starts with 0x0000); "
            "not an IDX file"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        raise DatasetFormatError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise DatasetFormatError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(
            f"{path}: truncated header ({len(data)} bytes, {ndim} dimensions need {header})"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[type_code])
    count = int(np.prod(dims, dtype=np.int64))
    expected = count * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise DatasetFormatError(
            f"{path}: truncated: dimensions {dims} need {expected} bytes of data, "
            f"the file has {actual}"
        )
    if actual > expected:
        raise DatasetFormatError(
            f"{path}: {actual - expected} unexpected trailing bytes after the data of "
            f"dimensions {dims}"
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))  # copy: writable, native order


def _reducer_of(obj: object) -> Callable[..., Any]:
    """The callable numpy pickles ``obj`` with (its module path differs across versions)."""
    reduced = obj.__reduce__()
    if not isinstance(reduced, tuple) or not callable(reduced[0]):
        raise TypeError(f"unexpected pickle reduction of {type(obj).__name__}")
    return cast("Callable[..., Any]", reduced[0])


#: The only globals a CIFAR pickle may reference (Python 2 and 3, numpy 1 and 2 names).
_ALLOWED_GLOBALS: Final[dict[tuple[str, str], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reducer_of(np.zeros(1)),
    ("numpy._core.multiarray", "_reconstruct"): _reducer_of(np.zeros(1)),
    ("numpy.core.multiarray", "scalar"): _reducer_of(np.int64(0)),
    ("numpy._core.multiarray", "scalar"): _reducer_of(np.int64(0)),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds containers and numpy arrays and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a dataset pickle"
            ) from None


def read_cifar_pickle(path: str | Path) -> dict[str, Any]:
    """Load one CIFAR "python version" batch file into a dict with ``str`` keys.

    Python 2 ``str`` values (for example ``b"batch_label"``) stay ``bytes``.
    """
    path = Path(path)
    raw = read_bytes(path)
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any failure to parse untrusted bytes is a format error
        raise DatasetFormatError(
            f"{path}: truncated or not a CIFAR python pickle ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}
