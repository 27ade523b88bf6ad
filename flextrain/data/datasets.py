"""Load the datasets of the catalog as normalised image tensors with train/test splits.

``load_dataset(name, root)`` returns a :class:`DatasetSplits` whose ``train`` and
``test`` are :class:`ImageDataset` objects (a ``TensorDataset`` of float32 images
N x C x H x W, normalised per dataset with fixed constants, and int64 labels).
The facts about each dataset (classes, channels, image size, how to obtain the files)
come from :data:`flextrain.api.catalog.DATASETS`.

Sources:

* ``digits``: scikit-learn's bundled 8 x 8 digits (1,797 images). No standard test
  split, so a deterministic stratified holdout (``holdout_fraction``, ``seed``).
* ``synthetic``: generated in memory from ``seed`` (class prototypes + shift + noise),
  same holdout as digits. Fast to learn: for tests and demos.
* ``fashion-mnist``: the four raw IDX files (optionally ``.gz``) in ``root`` or a
  common subfolder (``FashionMNIST/raw``, ``raw``, ...).
* ``cifar10`` / ``cifar100``: torchvision's "python version" folders
  ``cifar-10-batches-py`` / ``cifar-100-python`` in ``root``, read by our own reader
  (torchvision's checks file checksums, which rules out small test files).

Everything is deterministic for given arguments, so every trainer of a job that
calls ``load_dataset`` with the same arguments sees the same examples in the same
order, and a partition of ``train_labels`` means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from torch.utils.data import TensorDataset

from flextrain.api.catalog import DATASETS, DatasetInfo
from flextrain.data.errors import DatasetFormatError, DatasetNotFound
from flextrain.data.formats import read_cifar_pickle, read_idx


@dataclass(frozen=True)
class Normalisation:
    """Per-channel constants applied as ``(x / max_value - mean) / std``."""

    #: Mean of each channel after scaling pixels to [0, 1].
    mean: tuple[float, ...]
    #: Standard deviation of each channel after scaling pixels to [0, 1].
    std: tuple[float, ...]


#: Fixed normalisation constants per dataset (statistics of the full training data,
#: pixels scaled to [0, 1]). Fixed rather than computed per load so that a shard, a
#: ``limit``-ed subset and a test file all use the same transform.
NORMALISATION: Final[dict[str, Normalisation]] = {
    # load_digits().data / 16 over all 1,797 images and 64 pixels.
    "digits": Normalisation((0.3053,), (0.3760,)),
    # Generator's own statistics (prototypes are fixed, see _synthetic_arrays).
    "synthetic": Normalisation((0.5207,), (0.3357,)),
    "fashion-mnist": Normalisation((0.2860,), (0.3530,)),
    "cifar10": Normalisation((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Normalisation((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

#: Class names where the dataset defines them (CIFAR's come from its meta file).
FASHION_MNIST_CLASSES: Final[tuple[str, ...]] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: The four raw files of Fashion-MNIST (each may also be present as ``NAME.gz``).
FASHION_MNIST_FILES: Final[dict[str, str]] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: Subfolders of ``root`` searched for the Fashion-MNIST files, in order.
FASHION_MNIST_SUBDIRS: Final[tuple[str, ...]] = (
    ".",
    "FashionMNIST/raw",
    "raw",
    "FashionMNIST",
    "fashion-mnist",
    "fashion-mnist/raw",
    "fashion_mnist",
)

#: CIFAR folder inside ``root``, its training files, test file and meta file.
CIFAR_LAYOUT: Final[dict[str, tuple[str, tuple[str, ...], str, str]]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta"),
}

#: Examples generated for ``synthetic`` before the holdout split (4,000 train and
#: 1,000 test with the default ``holdout_fraction``).
SYNTHETIC_SIZE: Final[int] = 5000
#: Seed of the synthetic class prototypes: fixed, so the task is the same for every
#: ``seed`` and only the drawn examples change (like resampling a real dataset).
_SYNTHETIC_PROTOTYPE_SEED: Final[int] = 20231031
#: Standard deviation of the pixel noise of ``synthetic`` (pixels in [0, 1]).
_SYNTHETIC_NOISE: Final[float] = 0.3


class ImageDataset(TensorDataset):
    """A ``TensorDataset`` of ``(image, label)``: float32 N x C x H x W and int64 N.

    ``augment`` asks :func:`flextrain.data.loaders.make_loader` to apply random crop
    and horizontal flip to training batches; indexing the dataset never augments.
    """

    tensors: tuple[torch.Tensor, torch.Tensor]

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, augment: bool = False):
        if images.ndim != 4:
            raise ValueError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be a vector of {images.shape[0]} entries, "
                f"got shape {tuple(labels.shape)}"
            )
        super().__init__(images.to(torch.float32), labels.to(torch.int64))
        self.augment = augment

    @property
    def images(self) -> torch.Tensor:
        """All images, float32 N x C x H x W."""
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        """All labels, int64 N."""
        return self.tensors[1]


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A loaded dataset: train and test sets plus the facts models and partitioners need."""

    #: Catalog name (``digits``, ``synthetic``, ``fashion-mnist``, ``cifar10``, ...).
    name: str
    #: Training examples (after ``limit``), in a fixed order for given arguments.
    train: ImageDataset
    #: Test examples: the standard test split, or the stratified holdout.
    test: ImageDataset
    #: Number of classes, the output size of the head.
    num_classes: int
    #: Image channels and side length (square images).
    channels: int
    image_size: int
    #: Labels of ``train`` as an int64 numpy array, for partitioners.
    train_labels: np.ndarray
    #: Labels of ``test`` as an int64 numpy array.
    test_labels: np.ndarray
    #: Human-readable class names, ``num_classes`` of them.
    class_names: tuple[str, ...]
    #: The normalisation that was applied to the images.
    normalisation: Normalisation


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    limit: int | None = None,
    augment: bool = False,
) -> DatasetSplits:
    """Load dataset ``name`` (a key of the catalog) with its train and test sets.

    Args:
        name: catalog name of the dataset.
        root: directory holding the files of a non-builtin dataset (ignored for
            ``digits`` and ``synthetic``).
        seed: seed of every random choice made here: the synthetic examples, the
            holdout split and the ``limit`` subset.
        holdout_fraction: share of examples held out as the test set for datasets
            without a standard test split (``digits``, ``synthetic``); in (0, 1).
        limit: at most this many training examples, chosen stratified by class
            (class shares kept, within one example) and deterministically from
            ``seed``, for quick runs; kept in their original order. ``None`` keeps
            all. The test set is never limited.
        augment: mark the training set for random crop + horizontal flip in
            :func:`~flextrain.data.loaders.make_loader` (meant for CIFAR; off by
            default).

    Raises:
        ValueError: unknown name or invalid argument.
        DatasetNotFound: ``root`` missing, or the expected files are not in it.
        DatasetFormatError: a file is there but truncated, corrupt or mis-shaped.
    """
    info = DATASETS.get(name)
    if info is None:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples or None, got {limit}")

    class_names: tuple[str, ...] = tuple(str(c) for c in range(info.num_classes))
    if name in ("digits", "synthetic"):
        images, labels = _digits_arrays() if name == "digits" else _synthetic_arrays(seed)
        holdout = round(len(labels) * holdout_fraction)
        if not 0 < holdout < len(labels):
            raise ValueError(
                f"holdout_fraction {holdout_fraction} of {len(labels)} examples leaves an "
                "empty train or test set"
            )
        test_pick = stratified_subset(labels, holdout, seed)
        is_test = np.zeros(len(labels), dtype=bool)
        is_test[test_pick] = True
        train_x, train_y = images[~is_test], labels[~is_test]
        test_x, test_y = images[is_test], labels[is_test]
        max_value = 1.0
    elif name == "fashion-mnist":
        train_x, train_y, test_x, test_y = _fashion_mnist_arrays(info, root)
        class_names = FASHION_MNIST_CLASSES
        max_value = 255.0
    elif name in CIFAR_LAYOUT:
        train_x, train_y, test_x, test_y, names = _cifar_arrays(info, root)
        class_names = names or class_names
        max_value = 255.0
    else:  # pragma: no cover - the catalog grew without a loader
        raise ValueError(f"dataset {name!r} is in the catalog but has no loader")

    if limit is not None and limit < len(train_y):
        keep = np.sort(stratified_subset(train_y, limit, seed))
        train_x, train_y = train_x[keep], train_y[keep]

    norm = NORMALISATION[name]
    return DatasetSplits(
        name=name,
        train=ImageDataset(
            _normalise(train_x, max_value, norm), torch.tensor(train_y), augment=augment
        ),
        test=ImageDataset(_normalise(test_x, max_value, norm), torch.tensor(test_y)),
        num_classes=info.num_classes,
        channels=info.channels,
        image_size=info.image_size,
        train_labels=train_y,
        test_labels=test_y,
        class_names=class_names,
        normalisation=norm,
    )


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Pick ``size`` indices of ``labels`` keeping each class's share (within one).

    Each class gets ``size * n_c / n`` examples rounded by largest remainder (ties go
    to the lower class), chosen at random with ``seed``. Returns sorted int64 indices.
    """
    n = len(labels)
    if not 0 <= size <= n:
        raise ValueError(f"cannot pick {size} of {n} examples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (size / n)
    quota = np.floor(exact).astype(np.int64)
    short = size - int(quota.sum())
    # Largest fractional part first; stable sort keeps the lower class first on ties.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:short]] += 1
    picks = [
        rng.permutation(np.flatnonzero(labels == c))[:q]
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _normalise(images: np.ndarray, max_value: float, norm: Normalisation) -> torch.Tensor:
    """Scale to [0, 1] and normalise per channel; returns a new float32 tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)  # N x C x H x W
    channels = x.shape[1]
    if len(norm.mean) != channels:
        raise DatasetFormatError(f"expected {len(norm.mean)} channels, found {channels}")
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, channels, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(1, channels, 1, 1)
    return x.div_(max_value).sub_(mean).div_(std)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (float32 N x 1 x 8 x 8 in [0, 1], int64 labels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8
    return images, bunch.target.astype(np.int64)


def _synthetic_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``SYNTHETIC_SIZE`` examples of 10 classes, 1 x 8 x 8, pixels in [0, 1].

    Each class has a fixed blocky prototype (4 x 4 random levels upscaled to 8 x 8).
    An example is its class prototype rolled by -1..1 pixels on each axis plus
    Gaussian noise, clipped to [0, 1]. Classes are balanced. A linear classifier
    reaches about 80 % on it, a small convnet more; chance is 10 %.
    """
    coarse = np.random.default_rng(_SYNTHETIC_PROTOTYPE_SEED).random((10, 4, 4))
    prototypes = np.kron(coarse, np.ones((2, 2)))  # 10 x 8 x 8
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    rolled = np.stack(
        [np.roll(prototypes, shift, axis=(1, 2)) for shift in shifts], axis=1
    )  # 10 x 9 x 8 x 8

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(SYNTHETIC_SIZE) % 10).astype(np.int64)
    which_shift = rng.integers(0, len(shifts), SYNTHETIC_SIZE)
    images = rolled[labels, which_shift]  # N x 8 x 8
    images = images + rng.normal(0.0, _SYNTHETIC_NOISE, images.shape)
    return np.clip(images, 0.0, 1.0).astype(np.float32)[:, None], labels


def _check_root(info: DatasetInfo, root: str | Path | None, expected: Sequence[str]) -> Path:
    """The root directory as a Path, or DatasetNotFound when it is absent."""
    if root is None:
        raise DatasetNotFound(info.name, None, expected, info.how_to_obtain)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetNotFound(info.name, path, expected, info.how_to_obtain)
    return path


def _find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz`` (the uncompressed one first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_arrays(
    info: DatasetInfo, root: str | Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the four Fashion-MNIST IDX files from ``root`` or one of its subfolders."""
    expected = [f"{f}[.gz]" for f in FASHION_MNIST_FILES.values()]
    base = _check_root(info, root, expected)
    folders = [(base / sub) if sub != "." else base for sub in FASHION_MNIST_SUBDIRS]
    for folder in folders:
        found = {key: _find_file(folder, f) for key, f in FASHION_MNIST_FILES.items()}
        if all(found.values()):
            paths = {key: p for key, p in found.items() if p is not None}
            break
    else:
        raise DatasetNotFound(
            info.name, base, expected, info.how_to_obtain, [f for f in folders if f.is_dir()]
        )

    arrays: list[np.ndarray] = []
    for split in ("train", "test"):
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = read_idx(images_path), read_idx(labels_path)
        size = info.image_size
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
            raise DatasetFormatError(
                f"{images_path}: expected uint8 images N x {size} x {size}, "
                f"found {images.dtype} {images.shape}"
            )
        _check_labels(labels_path, labels, len(images), info.num_classes)
        arrays += [images[:, None], labels.astype(np.int64)]  # N x 1 x 28 x 28
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _check_labels(path: Path, labels: np.ndarray, count: int, num_classes: int) -> None:
    """Labels must be a vector of ``count`` integers in [0, num_classes)."""
    if labels.ndim != 1 or len(labels) != count:
        raise DatasetFormatError(
            f"{path}: expected {count} labels (one per image), found shape {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise DatasetFormatError(f"{path}: labels must be integers, found {labels.dtype}")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(
            f"{path}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}"
        )


def _cifar_arrays(
    info: DatasetInfo, root: str | Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Read a torchvision-format CIFAR folder: train and test arrays, class names."""
    folder_name, train_files, test_file, meta_file = CIFAR_LAYOUT[info.name]
    expected = [f"{folder_name}/{f}" for f in (*train_files, test_file)]
    base = _check_root(info, root, expected)
    # Accept root itself being the CIFAR folder.
    folder = base if (base / test_file).is_file() else base / folder_name
    missing = [f for f in (*train_files, test_file) if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFound(info.name, base, expected, info.how_to_obtain, [folder])

    label_key = "labels" if info.name == "cifar10" else "fine_labels"
    xs, ys = [], []
    for file in (*train_files, test_file):
        path = folder / file
        batch = read_cifar_pickle(path)
        data, labels = batch.get("data"), batch.get(label_key)
        if data is None or labels is None:
            raise DatasetFormatError(
                f"{path}: expected keys 'data' and {label_key!r}, found {sorted(batch)}"
            )
        size, channels = info.image_size, info.channels
        pixels = channels * size * size
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
            raise DatasetFormatError(
                f"{path}: expected 'data' as uint8 N x {pixels}, found {data.dtype} {data.shape}"
            )
        labels = np.asarray(labels)
        _check_labels(path, labels, len(data), info.num_classes)
        xs.append(data.reshape(-1, channels, size, size))  # N x 3 x 32 x 32
        ys.append(labels.astype(np.int64))

    names = _cifar_class_names(folder / meta_file, info.num_classes)
    # CIFAR-100 has one training file: no need to copy it.
    train_x = xs[0] if len(xs) == 2 else np.concatenate(xs[:-1])
    train_y = ys[0] if len(ys) == 2 else np.concatenate(ys[:-1])
    return train_x, train_y, xs[-1], ys[-1], names


def _cifar_class_names(path: Path, num_classes: int) -> tuple[str, ...] | None:
    """Class names from the optional CIFAR meta file, or None when absent or odd."""
    if not path.is_file():
        return None
    meta = read_cifar_pickle(path)
    names = meta.get("label_names", meta.get("fine_label_names"))
    if not isinstance(names, list) or len(names) != num_classes:
        return None
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
