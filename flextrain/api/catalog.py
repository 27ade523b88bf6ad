"""The vocabulary shared by every layer: which models and datasets exist.

Plain Python on purpose: the operator (no torch), the manifest validator and the
algorithm all read the same facts from here, so a model or dataset is added in one
place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: CIFAR ResNets have 6n+2 weight layers: 3 stages of n basic blocks (2 convs each),
#: plus the stem convolution and the linear head. FlexTrain's "depth" counts blocks.
RESNET_LAYERS: Final[tuple[int, ...]] = (8, 20, 32, 44, 56, 110)

MODEL_FAMILIES: Final[tuple[str, ...]] = ("resnet",)


def resnet_blocks_per_stage(layers: int) -> int:
    """Basic blocks in each of the three stages of a CIFAR ResNet with `layers` layers."""
    if layers not in RESNET_LAYERS:
        raise ValueError(f"ResNet layers must be one of {list(RESNET_LAYERS)}, got {layers}")
    return (layers - 2) // 6


def num_blocks(family: str, layers: int) -> int:
    """Number of residual blocks K of a model: the largest depth a tier can train."""
    if family != "resnet":
        raise ValueError(f"unknown model family {family!r}; known: {list(MODEL_FAMILIES)}")
    return 3 * resnet_blocks_per_stage(layers)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset the trainers can load."""

    name: str
    #: Number of classes (output size of the head).
    num_classes: int
    #: Image channels and side length (square images).
    channels: int
    image_size: int
    #: True when the data ships with a pip package (no source directory needed).
    builtin: bool
    #: How to obtain the files when they are not built in.
    how_to_obtain: str


DATASETS: Final[dict[str, DatasetInfo]] = {
    "digits": DatasetInfo(
        "digits", 10, 1, 8, True, "ships with scikit-learn (sklearn.datasets.load_digits)"
    ),
    "synthetic": DatasetInfo(
        "synthetic", 10, 1, 8, True, "generated in memory from the seed (for tests and demos)"
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        10,
        1,
        28,
        False,
        "a directory with the four standard raw files (train-images-idx3-ubyte[.gz], ...); "
        "on Debian `apt-get install dataset-fashion-mnist` installs them",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        10,
        3,
        32,
        False,
        "a directory holding torchvision's `cifar-10-batches-py/` "
        "(torchvision.datasets.CIFAR10(root, download=True) fetches it where there is internet)",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        100,
        3,
        32,
        False,
        "a directory holding torchvision's `cifar-100-python/` "
        "(torchvision.datasets.CIFAR100(root, download=True) fetches it where there is internet)",
    ),
}
