"""Analytic size and cost of every depth prefix of a CIFAR ResNet (pure Python, no torch).

:class:`UnitCost` and :class:`ArchProfile` describe any family's prefixes; the ViT's
costs and the registry of families are in :mod:`flextrain.core.families`.

FlexTrain (arXiv 2310.20457) gives a device the *prefix* of depth k of one global
network: stem + residual blocks 1..k + the shared head. This module computes, without
building the network, what that prefix costs, so that the Kubernetes operator (which
never imports torch) can derive ``depth: auto`` and report shares per tier.

Definitions (all per unit, then summed over the prefix):

``params``
    Trainable parameters: convolution and linear weights, the linear bias, and the
    BatchNorm affine weight and bias. BatchNorm running statistics are *not*
    parameters; they are counted separately in ``state_values``. With this definition
    the full ResNet-56 with 100 classes has 858,868 parameters, the figure of the
    method doc ("BN included"), and the prefix shares match the paper's Table 3.
``state_values`` / ``state_bytes``
    What a state dict of the prefix holds: params + BatchNorm ``running_mean`` and
    ``running_var`` (floating) + one int64 ``num_batches_tracked`` per BatchNorm layer.
    This is what a device downloads and uploads each round.
``macs``
    Multiply-accumulates of one forward pass of one example through the convolution and
    linear layers (kernel size x input channels x output channels x output positions,
    and in x out for the linear head). BatchNorm, ReLU, pooling, the residual addition
    and the parameter-free shortcut (subsample + zero-pad) are not counted. This is the
    usual "FLOPs" figure of CIFAR ResNets (ResNet-56 on 32x32: about 125.5 M) and it
    reproduces the method doc's MAC shares (ResNet-56: k=8 30.4 %, k=16 59.6 %, k=21
    77.4 %; ResNet-20: k=1 12.7 %, ..., k=8 88.4 %) to 0.1 percentage point.
``activations``
    Values per example that autograd keeps for the backward pass: the stem's input image
    and, for every convolution, its output (kept by BatchNorm) and the ReLU output that
    follows (kept by ReLU and by the next convolution as its input). A basic block thus
    keeps 4 tensors of its output size; the head keeps the pooled features and the
    logits. Tensors produced by skipped blocks' shortcuts are not kept. Used by
    :mod:`flextrain.core.policy` for its memory estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from flextrain.api.catalog import num_blocks, resnet_blocks_per_stage

#: Output channels of the stem and of the three stages of a CIFAR ResNet.
STEM_CHANNELS: Final[int] = 16
STAGE_CHANNELS: Final[tuple[int, int, int]] = (16, 32, 64)

#: Bytes of one BatchNorm ``num_batches_tracked`` counter (int64).
COUNTER_BYTES: Final[int] = 8


@dataclass(frozen=True)
class UnitCost:
    """Size and cost of one unit of the network (the stem, one block or the head)."""

    #: State-dict prefix of the unit: ``"stem"``, ``"blocks.{i}"`` or ``"head"``.
    name: str
    #: Trainable parameters (conv/linear weights, linear bias, BatchNorm affine).
    params: int
    #: Channels summed over the unit's BatchNorm layers (each has mean and var buffers).
    bn_channels: int
    #: Number of BatchNorm layers (each has one int64 ``num_batches_tracked``).
    bn_layers: int
    #: Forward multiply-accumulates per example (conv and linear layers only).
    macs: int
    #: Values per example kept for backward (see the module docstring).
    activations: int
    #: Output shape (channels, height, width) of the unit; ``(classes, 1, 1)`` for the head.
    out_shape: tuple[int, int, int]
    #: The unit's state-dict entries (parameters and buffers) as (full name, shape), in
    #: the order the torch module lists them.
    tensors: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def state_values(self) -> int:
        """Floating values in the unit's state dict: params + BatchNorm running stats."""
        return self.params + 2 * self.bn_channels


Tensors = tuple[tuple[str, tuple[int, ...]], ...]


def _bn_tensors(prefix: str, channels: int) -> Tensors:
    """State-dict entries of a BatchNorm layer: affine weight and bias, running stats, counter."""
    c = (channels,)
    return (
        (f"{prefix}.weight", c),
        (f"{prefix}.bias", c),
        (f"{prefix}.running_mean", c),
        (f"{prefix}.running_var", c),
        (f"{prefix}.num_batches_tracked", ()),
    )


def _conv_params(c_in: int, c_out: int, kernel: int = 3) -> int:
    return kernel * kernel * c_in * c_out


def _downsampled(size: int) -> int:
    """Side length after a 3x3 convolution with stride 2 and padding 1 (= ceil(size/2))."""
    return (size - 1) // 2 + 1


@dataclass(frozen=True)
class ArchProfile:
    """Per-unit costs of one depth-flexible model and their sums for any depth prefix.

    Depth ``k`` means stem + blocks ``0..k-1`` + head, for ``0 <= k <= num_blocks``
    (tiers use ``k >= 1``; depth 0 is stem + head and is allowed for completeness).
    """

    family: str
    layers: int
    num_classes: int
    in_channels: int
    image_size: int
    stem: UnitCost
    blocks: tuple[UnitCost, ...]
    head: UnitCost
    #: Family-specific options as sorted (name, value) pairs (empty for ResNets).
    options: tuple[tuple[str, int], ...] = ()

    @property
    def label(self) -> str:
        """The model in words, for messages: "a 20-layer ResNet", "a 6-block ViT"."""
        if self.family == "resnet":
            return f"a {self.layers}-layer ResNet"
        return f"a {self.layers}-block {self.family}"

    @property
    def num_blocks(self) -> int:
        """Number of residual blocks K (the deepest depth)."""
        return len(self.blocks)

    def check_depth(self, depth: int) -> int:
        """Return ``depth`` if ``0 <= depth <= num_blocks``, else raise ValueError."""
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ValueError(f"depth must be an int, got {depth!r}")
        if not 0 <= depth <= self.num_blocks:
            raise ValueError(
                f"depth must be in [0, {self.num_blocks}] for {self.label}, got {depth}"
            )
        return depth

    def units(self, depth: int | None = None) -> tuple[UnitCost, ...]:
        """The units of the depth-``depth`` prefix (all units when ``depth`` is None)."""
        k = self.num_blocks if depth is None else self.check_depth(depth)
        return (self.stem, *self.blocks[:k], self.head)

    def tensor_names(self, depth: int | None = None) -> list[str]:
        """State-dict names of the prefix (parameters and buffers), in module order."""
        return [name for u in self.units(depth) for name, _ in u.tensors]

    def parameters(self, depth: int | None = None) -> int:
        """Trainable parameters of the prefix (BatchNorm affine included, stats excluded)."""
        return sum(u.params for u in self.units(depth))

    def parameter_fraction(self, depth: int) -> float:
        """Share (0..1) of the full model's parameters held by the prefix."""
        return self.parameters(depth) / self.parameters()

    def macs(self, depth: int | None = None) -> int:
        """Forward multiply-accumulates per example of the prefix (conv + linear)."""
        return sum(u.macs for u in self.units(depth))

    def mac_fraction(self, depth: int) -> float:
        """Share (0..1) of the full model's forward MACs spent by the prefix."""
        return self.macs(depth) / self.macs()

    def activations(self, depth: int | None = None) -> int:
        """Values per example kept for backward when training the prefix."""
        return sum(u.activations for u in self.units(depth))

    def state_values(self, depth: int | None = None) -> int:
        """Floating values in the prefix's state dict (params + BatchNorm running stats)."""
        return sum(u.state_values for u in self.units(depth))

    def state_bytes(self, depth: int | None = None, bytes_per_value: int = 4) -> int:
        """Bytes of the prefix's state dict: floating values plus int64 BN counters."""
        units = self.units(depth)
        floats = sum(u.state_values for u in units)
        counters = sum(u.bn_layers for u in units)
        return floats * bytes_per_value + counters * COUNTER_BYTES


def _basic_block(name: str, c_in: int, c_out: int, side: int) -> UnitCost:
    """One basic block producing ``c_out`` channels at ``side`` x ``side``."""
    positions = side * side
    conv1 = _conv_params(c_in, c_out)
    conv2 = _conv_params(c_out, c_out)
    return UnitCost(
        name=name,
        params=conv1 + conv2 + 4 * c_out,
        bn_channels=2 * c_out,
        bn_layers=2,
        macs=(conv1 + conv2) * positions,
        activations=4 * c_out * positions,
        out_shape=(c_out, side, side),
        tensors=(
            (f"{name}.conv1.weight", (c_out, c_in, 3, 3)),
            *_bn_tensors(f"{name}.bn1", c_out),
            (f"{name}.conv2.weight", (c_out, c_out, 3, 3)),
            *_bn_tensors(f"{name}.bn2", c_out),
        ),
    )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def profile(
    family: str,
    layers: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    stage_adapters: int = 0,
) -> ArchProfile:
    """Compute the per-unit costs of a CIFAR ResNet (3 stages, 16/32/64 channels).

    Other families: :func:`flextrain.core.families.profile` dispatches on the family.
    ``stage_adapters`` (a research option, :mod:`flextrain.core.models`) adds the head's
    per-stage adapters for the stages before the last -- 1: ``Linear(C_s -> 64)``
    without bias; 2: a per-channel scale and shift of ``C_s`` values each -- to the
    head's tensors and parameters; their multiply-adds (at most 32 x 64 per example,
    one adapter per prefix) and activations are not counted.

    Args:
        family: ``"resnet"``.
        layers: 8, 20, 32, 44, 56 or 110.
        num_classes: output size of the head.
        in_channels: image channels (1 for grey, 3 for RGB).
        image_size: side length of the square input images, in pixels.
    """
    if family != "resnet":
        raise ValueError(
            f"arch.profile describes ResNets, got family {family!r}; "
            "flextrain.core.families.profile handles every family"
        )
    n = resnet_blocks_per_stage(layers)
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    _check_positive("image_size", image_size)

    side = image_size
    stem = UnitCost(
        name="stem",
        params=_conv_params(in_channels, STEM_CHANNELS) + 2 * STEM_CHANNELS,
        bn_channels=STEM_CHANNELS,
        bn_layers=1,
        macs=_conv_params(in_channels, STEM_CHANNELS) * side * side,
        activations=in_channels * side * side + 2 * STEM_CHANNELS * side * side,
        out_shape=(STEM_CHANNELS, side, side),
        tensors=(
            ("stem.conv.weight", (STEM_CHANNELS, in_channels, 3, 3)),
            *_bn_tensors("stem.bn", STEM_CHANNELS),
        ),
    )
    blocks: list[UnitCost] = []
    c_in = STEM_CHANNELS
    for stage, c_out in enumerate(STAGE_CHANNELS):
        for j in range(n):
            if stage > 0 and j == 0:
                side = _downsampled(side)
            blocks.append(_basic_block(f"blocks.{len(blocks)}", c_in, c_out, side))
            c_in = c_out
    features = STAGE_CHANNELS[-1]
    adapters: Tensors = ()
    if stage_adapters == 1:
        adapters = tuple(
            (f"head.adapters.{s}.weight", (features, width))
            for s, width in enumerate(STAGE_CHANNELS[:-1])
        )
    elif stage_adapters == 2:
        adapters = tuple(
            (f"head.adapters.{s}.{name}", (width,))
            for s, width in enumerate(STAGE_CHANNELS[:-1])
            for name in ("weight", "bias")
        )
    elif stage_adapters:
        raise ValueError(f"stage_adapters must be 0, 1 or 2, got {stage_adapters!r}")
    head = UnitCost(
        name="head",
        params=features * num_classes
        + num_classes
        + sum(math.prod(shape) for _, shape in adapters),
        bn_channels=0,
        bn_layers=0,
        macs=features * num_classes,
        activations=features + num_classes,
        out_shape=(num_classes, 1, 1),
        tensors=(
            ("head.fc.weight", (num_classes, features)),
            ("head.fc.bias", (num_classes,)),
            *adapters,
        ),
    )
    assert len(blocks) == num_blocks(family, layers)
    return ArchProfile(
        family=family,
        layers=layers,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        stem=stem,
        blocks=tuple(blocks),
        head=head,
    )


#: Image size used where only parameter counts are wanted (they do not depend on it).
_ANY_SIZE: Final[int] = 32


def parameter_counts(family: str, layers: int, num_classes: int, in_channels: int) -> list[int]:
    """Trainable parameters of every prefix; index ``k`` is depth ``k`` (0..K)."""
    p = profile(family, layers, num_classes, in_channels, _ANY_SIZE)
    return [p.parameters(k) for k in range(p.num_blocks + 1)]


def parameter_fractions(
    family: str, layers: int, num_classes: int, in_channels: int
) -> list[float]:
    """Share (0..1) of the full model's parameters of every prefix, indexed by depth."""
    counts = parameter_counts(family, layers, num_classes, in_channels)
    return [c / counts[-1] for c in counts]


def mac_fractions(
    family: str, layers: int, num_classes: int, in_channels: int, image_size: int
) -> list[float]:
    """Share (0..1) of the full model's forward MACs of every prefix, indexed by depth."""
    p = profile(family, layers, num_classes, in_channels, image_size)
    return [p.mac_fraction(k) for k in range(p.num_blocks + 1)]


def closest_depth_to_parameter_share(arch: ArchProfile, share: float) -> int:
    """The depth ``k >= 1`` whose parameter share is closest to ``share`` (0..1).

    Used to place the paper's depth distribution: for ResNet-56 with 100 classes a
    ~35 % prefix is k = 19 and a ~15 % prefix is k = 14 (the paper says "19 or 20" and
    "13 or 14"). Ties go to the shallower depth.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return min(
        range(1, arch.num_blocks + 1),
        key=lambda k: (abs(arch.parameter_fraction(k) - share), k),
    )
