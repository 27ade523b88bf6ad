"""Small dataset files in the exact on-disk formats of the real ones, for tests.

* :func:`make_fashion_mnist_dir` writes the four raw IDX files (plain or ``.gz``).
* :func:`make_cifar_dir` writes torchvision's ``cifar-10-batches-py`` or
  ``cifar-100-python`` folder. By default the pickles are assembled opcode by opcode
  the way Python 2 wrote the real files (``numpy.core.multiarray`` globals, Python 2
  ``str`` payloads), so readers are tested against what users actually have; pass
  ``py2=False`` for a Python 3 ``pickle.dump`` instead.

Every generator returns the arrays it wrote (:class:`FakeArrays`), so tests can
compare what a loader reads with what was written.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


@dataclass
class FakeArrays:
    """What a fake dataset directory holds: uint8 images N x C x H x W and int labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    #: The folder holding the files.
    folder: Path


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise ``array`` as an IDX file: magic, big-endian dims, big-endian data."""
    kind = array.dtype.str[1:]
    header = bytes([0, 0, _IDX_TYPE_CODES[kind], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """Write ``array`` as an IDX file at ``path`` (``path.gz`` when ``gz``)."""
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_fashion_mnist_dir(
    root: Path,
    *,
    subdir: str = "",
    n_train: int = 40,
    n_test: int = 20,
    gz: bool = False,
    seed: int = 0,
    image_size: int = 28,
) -> FakeArrays:
    """Write the four Fashion-MNIST raw files with random content into ``root/subdir``.

    Labels cycle through all 10 classes so every class is present.
    """
    rng = np.random.default_rng(seed)
    folder = root / subdir if subdir else root
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, image_size, image_size), dtype=np.uint8),
        "train_labels": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, image_size, image_size), dtype=np.uint8),
        "test_labels": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, name in FASHION_FILES.items():
        write_idx(folder / name, arrays[key], gz=gz)
    return FakeArrays(
        arrays["train_images"][:, None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64),
        folder,
    )


# --- CIFAR ---------------------------------------------------------------------------


def make_cifar_dir(
    root: Path,
    kind: str = "cifar10",
    *,
    per_file: int = 12,
    n_test: int = 10,
    py2: bool = True,
    seed: int = 0,
    with_meta: bool = True,
) -> FakeArrays:
    """Write a torchvision-format CIFAR folder under ``root`` with random images.

    ``cifar10``: ``cifar-10-batches-py/data_batch_1..5`` (``per_file`` images each),
    ``test_batch`` and ``batches.meta``. ``cifar100``: ``cifar-100-python/train``
    (``per_file`` images), ``test`` and ``meta``.
    """
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, train_files, test_file, num_classes = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            10,
        )
    elif kind == "cifar100":
        folder, train_files, test_file, num_classes = (
            root / "cifar-100-python",
            ["train"],
            "test",
            100,
        )
    else:
        raise ValueError(kind)
    folder.mkdir(parents=True, exist_ok=True)

    def batch(file_name: str, n: int, label: str) -> tuple[np.ndarray, list[int]]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, n)]
        record: dict[bytes, object] = {
            b"batch_label": label.encode(),
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        if kind == "cifar10":
            record[b"labels"] = labels
        else:
            record[b"fine_labels"] = labels
            record[b"coarse_labels"] = [v // 5 for v in labels]
        write_pickle(folder / file_name, record, py2=py2)
        return data, labels

    xs, ys = [], []
    for file_name in train_files:
        data, labels = batch(file_name, per_file, f"training batch of {file_name}")
        xs.append(data)
        ys += labels
    test_data, test_labels = batch(test_file, n_test, "testing batch 1 of 1")

    if with_meta:
        if kind == "cifar10":
            meta: dict[bytes, object] = {
                b"label_names": [f"class{i}".encode() for i in range(10)],
                b"num_cases_per_batch": per_file,
                b"num_vis": 3072,
            }
            write_pickle(folder / "batches.meta", meta, py2=py2)
        else:
            meta = {
                b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
            }
            write_pickle(folder / "meta", meta, py2=py2)

    return FakeArrays(
        np.concatenate(xs).reshape(-1, 3, 32, 32),
        np.array(ys, dtype=np.int64),
        test_data.reshape(-1, 3, 32, 32),
        np.array(test_labels, dtype=np.int64),
        folder,
    )


def write_pickle(path: Path, record: dict[bytes, object], *, py2: bool = True) -> None:
    """Pickle ``record`` as Python 2 wrote CIFAR (``py2``) or with Python 3's protocol 2."""
    if py2:
        path.write_bytes(py2_pickle(record))
    else:
        with path.open("wb") as f:
            pickle.dump(record, f, protocol=2)


def py2_pickle(record: dict[bytes, object]) -> bytes:
    """A protocol-2 pickle of ``record`` as Python 2 + numpy 1 would write it.

    Values may be bytes (Python 2 ``str``), ints, lists of those, or C-contiguous
    uint8 numpy arrays.
    """
    out = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    for key, value in record.items():
        out += _py2_str(key) + _py2_value(value)
    out += b"u."  # SETITEMS, STOP
    return bytes(out)


def _py2_str(data: bytes) -> bytes:
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(data)) + data  # BINSTRING


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    return b"J" + struct.pack("<i", value)  # BININT


def _py2_value(value: object) -> bytes:
    if isinstance(value, bytes):
        return _py2_str(value)
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, list):
        items = b"".join(_py2_value(v) for v in value)
        return b"](" + items + b"e"  # EMPTY_LIST, MARK, items, APPENDS
    if isinstance(value, np.ndarray):
        return _py2_ndarray(value)
    raise TypeError(type(value))


def _py2_ndarray(array: np.ndarray) -> bytes:
    """numpy 1.x's __reduce__ of a uint8 array, as Python 2 pickled it."""
    assert array.dtype == np.uint8 and array.flags.c_contiguous
    out = bytearray()
    out += b"cnumpy.core.multiarray\n_reconstruct\n"  # GLOBAL
    out += b"cnumpy\nndarray\n"
    out += _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"  # ((0,), 'b') -> REDUCE
    out += b"(" + _py2_int(1)  # state: (version,
    out += b"(" + b"".join(_py2_int(d) for d in array.shape) + b"t"  # shape,
    out += b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
    out += b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN"
    out += b"J" + struct.pack("<i", -1) + b"J" + struct.pack("<i", -1) + _py2_int(0)
    out += b"tb"  # dtype state tuple, BUILD
    out += b"\x89"  # fortran order: False
    out += _py2_str(array.tobytes())  # raw data as a Python 2 str
    out += b"tb"  # state tuple, BUILD
    return bytes(out)
