"""The raw readers: IDX (plain and gzip) and CIFAR python pickles."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from flextrain.data import DatasetFormatError, read_cifar_pickle, read_idx
from tests.unit.data.fakes import idx_bytes, py2_pickle, write_idx


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trips_every_type_code(tmp_path: Path, dtype: str, gz: bool) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = write_idx(tmp_path / "x-idx3", array, gz=gz)

    read = read_idx(path)

    assert read.shape == (2, 3, 4)
    assert read.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(read, array)


def test_idx_header_is_big_endian(tmp_path: Path) -> None:
    # Hand-written file: magic 0x00000801 (ubyte, 1 dim), count 3 (big-endian), data.
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))

    np.testing.assert_array_equal(read_idx(path), [7, 8, 9])


def test_idx_array_is_writable(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros((2, 2), np.uint8))
    read_idx(path)[0, 0] = 1  # no "read-only" error


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00\x00", "trailing bytes"),
        (lambda b: b"\x1f\x8b" + b[2:], "bad magic number"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX type code"),
        (lambda b: b[:6], "truncated header"),
        (lambda b: b[:3], "too short"),
        (lambda b: b[:3] + b"\x00", "0 dimensions"),
    ],
)
def test_damaged_idx_fails_with_a_clear_error(tmp_path: Path, mangle, message: str) -> None:
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(mangle(idx_bytes(np.zeros((2, 4, 4), np.uint8))))

    with pytest.raises(DatasetFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_fails_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 8, 8), np.uint8)))[:-20])

    with pytest.raises(DatasetFormatError, match="gzip"):
        read_idx(path)


def test_not_gzip_despite_name_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(idx_bytes(np.zeros((2, 2), np.uint8)))

    with pytest.raises(DatasetFormatError, match="gzip"):
        read_idx(path)


@pytest.mark.parametrize("py2", [True, False])
def test_cifar_pickle_reads_arrays_and_lists_with_str_keys(tmp_path: Path, py2: bool) -> None:
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    record = {b"data": data, b"labels": [3, 300], b"batch_label": b"training batch 1 of 5"}
    path = tmp_path / "data_batch_1"
    if py2:
        path.write_bytes(py2_pickle(record))
    else:
        path.write_bytes(pickle.dumps(record, protocol=2))

    read = read_cifar_pickle(path)

    assert set(read) == {"data", "labels", "batch_label"}
    assert read["data"].dtype == np.uint8
    np.testing.assert_array_equal(read["data"], data)
    assert read["labels"] == [3, 300]
    assert read["batch_label"] == b"training batch 1 of 5"


class _RunsCode:
    """A pickle payload that would create a file if the unpickler let it run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_cifar_pickle_refuses_to_run_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _RunsCode(target)}, protocol=2))

    with pytest.raises(DatasetFormatError, match=r"posix\.mkdir is not allowed|not allowed"):
        read_cifar_pickle(path)
    assert not target.exists()


def test_truncated_cifar_pickle_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    record = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    path.write_bytes(py2_pickle(record)[:-100])

    with pytest.raises(DatasetFormatError, match="truncated or not a CIFAR python pickle"):
        read_cifar_pickle(path)


def test_cifar_pickle_must_hold_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))

    with pytest.raises(DatasetFormatError, match="expected a pickled dict"):
        read_cifar_pickle(path)
