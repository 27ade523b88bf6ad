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

#: Depth-flexible model families. Each has a torch-free shape description
#: (``flextrain.core.arch.FAMILIES``) and a torch builder (``flextrain.core.models.BUILDERS``).
MODEL_FAMILIES: Final[tuple[str, ...]] = ("resnet", "vit")

#: Merge strategies of the aggregator (``flextrain.core.merge.STRATEGIES``).
MERGE_STRATEGIES: Final[tuple[str, ...]] = ("pad", "holder-weighted", "robust")

#: Coordinate-wise statistics of the robust merge (``flextrain.core.merge.ROBUST_METHODS``).
ROBUST_METHODS: Final[tuple[str, ...]] = ("trimmed-mean", "median")
#: The robust merge's trimmed share per end when a job gives none, and its limit (excluded).
ROBUST_TRIM_FRACTION_DEFAULT: Final[float] = 0.2
ROBUST_TRIM_FRACTION_LIMIT: Final[float] = 0.5
#: The robust merge's clipping bound (a multiple of the median update norm) when a job
#: gives none, and the largest allowed; 0 turns clipping off, otherwise at least 1.
ROBUST_CLIP_MULTIPLE_DEFAULT: Final[float] = 3.0
ROBUST_CLIP_MULTIPLE_MAX: Final[float] = 1000.0

#: Wire compressions of tensors (``none`` = float32).
COMPRESSIONS: Final[tuple[str, ...]] = ("none", "float16", "bfloat16")


@dataclass(frozen=True)
class IntRange:
    """An inclusive range of allowed integer values."""

    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.low} to {self.high}"


#: Limits of the Vision Transformer family: ``layers`` is its number of transformer
#: blocks K; the others are its ``options``.
VIT_BLOCKS: Final[IntRange] = IntRange(1, 32)
VIT_LIMITS: Final[dict[str, IntRange]] = {
    "embed_dim": IntRange(8, 1024),
    "heads": IntRange(1, 16),
    "patch_size": IntRange(1, 16),
    "mlp_ratio": IntRange(1, 8),
}
#: Options of a ViT when the manifest leaves them out (sized for 8x8 to 32x32 images).
VIT_DEFAULTS: Final[dict[str, int]] = {"embed_dim": 64, "heads": 4, "patch_size": 2, "mlp_ratio": 2}

#: Family-specific options each family accepts (ResNets have none: ``layers`` says all).
FAMILY_OPTIONS: Final[dict[str, tuple[str, ...]]] = {"resnet": (), "vit": tuple(VIT_LIMITS)}


def resnet_blocks_per_stage(layers: int) -> int:
    """Basic blocks in each of the three stages of a CIFAR ResNet with `layers` layers."""
    if layers not in RESNET_LAYERS:
        raise ValueError(f"ResNet layers must be one of {list(RESNET_LAYERS)}, got {layers}")
    return (layers - 2) // 6


def vit_problem(layers: int, options: dict[str, int], image_size: int | None = None) -> str | None:
    """What is wrong with a ViT's shape, or None. The message names the field.

    ``layers`` is the number of transformer blocks; ``options`` must hold exactly the
    keys of :data:`VIT_LIMITS`. With ``image_size`` the patch size must divide it.
    """
    if layers not in VIT_BLOCKS:
        return f"layers: a vit has {VIT_BLOCKS} transformer blocks, got {layers!r}"
    unknown = sorted(set(options) - set(VIT_LIMITS))
    if unknown:
        return f"unknown vit option(s) {unknown}; known: {list(VIT_LIMITS)}"
    for name, limit in VIT_LIMITS.items():
        if name not in options:
            return f"{name}: missing; allowed {limit}"
        if options[name] not in limit:
            return f"{name} must be {limit}, got {options[name]!r}"
    if options["embed_dim"] % options["heads"]:
        return (
            f"embed_dim {options['embed_dim']} must be a multiple of heads {options['heads']} "
            "(each head gets embed_dim / heads channels)"
        )
    if image_size is not None and image_size % options["patch_size"]:
        return (
            f"patch_size {options['patch_size']} must divide the image size {image_size} "
            "(the patches tile the image)"
        )
    return None


def num_blocks(family: str, layers: int) -> int:
    """Number of blocks K of a model (residual or transformer): the deepest depth a tier can train."""
    if family == "resnet":
        return 3 * resnet_blocks_per_stage(layers)
    if family == "vit":
        if layers not in VIT_BLOCKS:
            raise ValueError(f"ViT layers (transformer blocks) must be {VIT_BLOCKS}, got {layers}")
        return layers
    raise ValueError(f"unknown model family {family!r}; known: {list(MODEL_FAMILIES)}")


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
