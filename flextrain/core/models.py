"""Depth-flexible CIFAR ResNets: every prefix of blocks is a usable model.

FlexTrain (arXiv 2310.20457, Sec. 3) trains one residual network whose sub-model of
depth k -- the stem, the first k residual blocks and the one shared classifier head --
is a model on its own. Skipped blocks act as the identity. A skipped *downsampling*
block (first block of stages 2 and 3) still applies its parameter-free "option A"
shortcut (stride-2 subsample + zero-padded channels), so the head always sees 64
channels at the final resolution (the method doc marks this as inferred).

State-dict names are ``stem.*``, ``blocks.{i}.*`` and ``head.*``; the partition, merge
and wire code rely on these prefixes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from flextrain.api.catalog import MODEL_FAMILIES, num_blocks, resnet_blocks_per_stage
from flextrain.core.arch import STAGE_CHANNELS, STEM_CHANNELS, ArchProfile, profile


class Stem(nn.Module):
    """conv3x3(in -> 16) + BatchNorm + ReLU at the input resolution."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, STEM_CHANNELS, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(STEM_CHANNELS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))  # (B, 16, H, W)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a parameter-free option-A shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    @property
    def downsamples(self) -> bool:
        """True when the block changes resolution or width (its shortcut is not identity)."""
        return self.stride != 1 or self.in_channels != self.out_channels

    def shortcut(self, x: Tensor) -> Tensor:
        """Option A: subsample by the stride and zero-pad the new channels (no parameters)."""
        if not self.downsamples:
            return x
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, ceil(H/s), ceil(W/s))
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))  # (B, C_out, H', W')

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H', W')
        out = self.bn2(self.conv2(out))  # (B, C_out, H', W')
        return F.relu(out + self.shortcut(x))  # (B, C_out, H', W')


class Head(nn.Module):
    """The one shared classifier: global average pool + Linear(64 -> classes)."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        pooled = h.mean(dim=(2, 3))  # (B, 64)
        logits: Tensor = self.fc(pooled)  # (B, classes)
        return logits


class FlexResNet(nn.Module):
    """CIFAR ResNet (3 stages x n basic blocks, 16/32/64 channels) runnable at any depth.

    ``forward(x, depth=k)`` runs the stem, ``blocks[0:k]`` and the head. ``depth`` is
    in ``[0, num_blocks]``; tiers use ``k >= 1``, depth 0 (stem + head) exists only for
    completeness. Works for any input size (the head pools globally), e.g. 1x8x8,
    1x28x28 and 3x32x32.
    """

    def __init__(self, layers: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        n = resnet_blocks_per_stage(layers)
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")
        self.layers = layers
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem = Stem(in_channels)
        blocks: list[BasicBlock] = []
        c_in = STEM_CHANNELS
        for stage, c_out in enumerate(STAGE_CHANNELS):
            for j in range(n):
                stride = 2 if stage > 0 and j == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(STAGE_CHANNELS[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_blocks(self) -> int:
        """Number of residual blocks K (the deepest depth)."""
        return len(self.blocks)

    @property
    def block_list(self) -> list[BasicBlock]:
        """``blocks`` as a typed list (same modules)."""
        return [cast(BasicBlock, b) for b in self.blocks]

    def check_depth(self, depth: int | None) -> int:
        """Resolve ``None`` to ``num_blocks`` and validate ``0 <= depth <= num_blocks``."""
        if depth is None:
            return self.num_blocks
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ValueError(f"depth must be an int or None, got {depth!r}")
        if not 0 <= depth <= self.num_blocks:
            raise ValueError(f"depth must be in [0, {self.num_blocks}], got {depth}")
        return depth

    def skip_rest(self, h: Tensor, depth: int) -> Tensor:
        """Carry the features after ``depth`` blocks past the skipped blocks.

        Skipped blocks are the identity except downsampling ones, whose parameter-free
        shortcut still runs, so the result always has 64 channels at the final
        resolution.
        """
        for block in self.block_list[depth:]:
            if block.downsamples:
                h = block.shortcut(h)  # (B, C_next, ceil(H/2), ceil(W/2))
        return h

    def logits_from(self, h: Tensor, depth: int) -> Tensor:
        """Logits of the shared head from the features after ``depth`` blocks."""
        logits: Tensor = self.head(self.skip_rest(h, depth))  # (B, classes)
        return logits

    def forward_features(self, x: Tensor, depth: int | None = None) -> Tensor:
        """What the head sees at depth ``depth``: (B, 64, H_final, W_final) features."""
        k = self.check_depth(depth)
        h = self.stem(x)  # (B, 16, H, W)
        for block in self.blocks[:k]:
            h = block(h)  # (B, C_i, H_i, W_i)
        return self.skip_rest(h, k)  # (B, 64, H_final, W_final)

    def forward(self, x: Tensor, depth: int | None = None) -> Tensor:
        """Logits of the depth-``depth`` sub-model (full model when None)."""
        features = self.forward_features(x, depth)  # (B, 64, H_final, W_final)
        logits: Tensor = self.head(features)  # (B, classes)
        return logits

    def forward_multi(self, x: Tensor, depths: Iterable[int]) -> dict[int, Tensor]:
        """Logits at several depths from ONE pass through the shared trunk.

        Returns ``{depth: logits (B, classes)}``. Blocks beyond ``max(depths)`` are not
        run. Used by auto-distillation, where teacher and student differ by one block.
        """
        wanted = sorted({self.check_depth(d) for d in depths})
        if not wanted:
            raise ValueError("forward_multi needs at least one depth")
        out: dict[int, Tensor] = {}
        h = self.stem(x)  # (B, 16, H, W)
        for d in range(wanted[-1] + 1):
            if d in wanted:
                out[d] = self.logits_from(h, d)  # (B, classes)
            if d < wanted[-1]:
                h = self.blocks[d](h)  # (B, C_d, H_d, W_d)
        return out


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same global model on any machine."""

    #: Model family; only ``"resnet"`` (CIFAR ResNet) exists.
    family: str
    #: ResNet layers: 8, 20, 32, 44, 56 or 110 (K = (layers - 2) / 2 blocks).
    layers: int
    #: Output size of the head.
    num_classes: int
    #: Image channels (1 grey, 3 RGB).
    in_channels: int
    #: Side length of the square input images in pixels (costs only; the net pools globally).
    image_size: int

    def __post_init__(self) -> None:
        if self.family not in MODEL_FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}")
        resnet_blocks_per_stage(self.layers)  # validates layers
        for name in ("num_classes", "in_channels", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    @property
    def num_blocks(self) -> int:
        """Number of residual blocks K."""
        return num_blocks(self.family, self.layers)

    def build(self) -> FlexResNet:
        """A freshly initialised model (seed torch yourself for reproducibility)."""
        return build_model(self.family, self.layers, self.num_classes, self.in_channels)

    def profile(self) -> ArchProfile:
        """Analytic per-depth parameters, MACs and activations of this model."""
        return profile(
            self.family, self.layers, self.num_classes, self.in_channels, self.image_size
        )


def build_model(family: str, layers: int, num_classes: int, in_channels: int) -> FlexResNet:
    """Build a depth-flexible model of ``family`` (only ``"resnet"``) and ``layers``."""
    if family != "resnet":
        raise ValueError(f"unknown model family {family!r}; known: {list(MODEL_FAMILIES)}")
    return FlexResNet(layers, num_classes, in_channels)


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of trainable parameter values of ``model`` (for cross-checking arch.py)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "BasicBlock",
    "FlexResNet",
    "Head",
    "ModelSpec",
    "Stem",
    "build_model",
    "trainable_parameter_count",
]
