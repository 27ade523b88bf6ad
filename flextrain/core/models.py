"""Depth-flexible models: CIFAR ResNets here, the builder of every family, ModelSpec.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import torch.nn.functional as F
from torch import Tensor, nn

from flextrain.api.catalog import DATASETS, MODEL_FAMILIES, num_blocks, resnet_blocks_per_stage
from flextrain.api.flextrainjob import FlexTrainJob
from flextrain.core.arch import STAGE_CHANNELS, STEM_CHANNELS, ArchProfile
from flextrain.core.families import Options, family, normalise_options, profile
from flextrain.core.flexmodel import FlexModel
from flextrain.core.vit import FlexViT


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


class FlexResNet(FlexModel):
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
    def block_list(self) -> list[BasicBlock]:
        """``blocks`` as a typed list (same modules)."""
        return [cast(BasicBlock, b) for b in self.blocks]

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


@dataclass(frozen=True)
class ModelSpec:
    """The one identity of a global model: everything needed to rebuild it anywhere.

    The aggregator derives it from the job (:func:`from_job_model`), sends it to every
    trainer (``ModelDescription`` on the wire) and writes it next to exported
    sub-models (:meth:`to_dict` / :meth:`from_dict`).
    """

    #: Model family (:data:`flextrain.api.catalog.MODEL_FAMILIES`).
    family: str
    #: ResNet: weight layers 8, 20, 32, 44, 56 or 110 (K = (layers - 2) / 2 blocks);
    #: ViT: transformer blocks K.
    layers: int
    #: Output size of the head.
    num_classes: int
    #: Image channels (1 grey, 3 RGB).
    in_channels: int
    #: Side length of the square input images in pixels.
    image_size: int
    #: Family-specific options as sorted (name, value) pairs; a mapping is accepted and
    #: normalised, missing ViT options take their defaults. Empty for ResNets.
    options: Options = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", normalise_options(self.family, self.options))
        for name in ("num_classes", "in_channels", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        family(self.family).check(self.layers, self.options, self.image_size)

    @property
    def num_blocks(self) -> int:
        """Number of blocks K."""
        return num_blocks(self.family, self.layers)

    def option(self, name: str) -> int:
        """One family-specific option (KeyError when the family has no such option)."""
        return dict(self.options)[name]

    def build(self) -> FlexModel:
        """A freshly initialised model (seed torch yourself for reproducibility)."""
        return BUILDERS[self.family](self)

    def profile(self) -> ArchProfile:
        """Analytic per-depth tensor names, parameters, MACs and activations."""
        return profile(
            self.family,
            self.layers,
            self.num_classes,
            self.in_channels,
            self.image_size,
            self.options,
        )

    @property
    def label(self) -> str:
        """Short name for reports: "resnet-20", "vit-6 (embed_dim 64, heads 4, ...)"."""
        text = f"{self.family}-{self.layers}"
        if self.options:
            text += " (" + ", ".join(f"{k} {v}" for k, v in self.options) + ")"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready identity (export metadata, checkpoints)."""
        return {
            "family": self.family,
            "layers": self.layers,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "options": dict(self.options),
        }

    @classmethod
    def for_job(cls, job: FlexTrainJob) -> ModelSpec:
        """The global model of a FlexTrainJob (input shape from its dataset)."""
        model = job.spec.model
        data = DATASETS[job.spec.dataset.name]
        return cls(
            model.family,
            model.layers,
            job.num_classes,
            data.channels,
            data.image_size,
            tuple(sorted(model.options.items())),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; ``options`` may be absent (ResNet exports before it)."""
        return cls(
            data["family"],
            data["layers"],
            data["num_classes"],
            data["in_channels"],
            data["image_size"],
            tuple(sorted(dict(data.get("options") or {}).items())),
        )


def _build_resnet(spec: ModelSpec) -> FlexModel:
    return FlexResNet(spec.layers, spec.num_classes, spec.in_channels)


def _build_vit(spec: ModelSpec) -> FlexModel:
    o = dict(spec.options)
    return FlexViT(
        spec.layers,
        spec.num_classes,
        spec.in_channels,
        spec.image_size,
        embed_dim=o["embed_dim"],
        heads=o["heads"],
        patch_size=o["patch_size"],
        mlp_ratio=o["mlp_ratio"],
    )


#: The torch module of every family; the keys equal :data:`flextrain.core.families.FAMILIES`.
BUILDERS: Final[dict[str, Callable[[ModelSpec], FlexModel]]] = {
    "resnet": _build_resnet,
    "vit": _build_vit,
}


def build_model(
    family: str,
    layers: int,
    num_classes: int,
    in_channels: int,
    image_size: int = 32,
    options: Mapping[str, int] | Options | None = None,
) -> FlexModel:
    """Build a depth-flexible model of ``family`` (see :data:`BUILDERS`).

    ``image_size`` matters only to families whose parameters depend on it (the ViT's
    position embedding); ResNets pool globally and run at any size.
    """
    if family not in BUILDERS:
        raise ValueError(f"unknown model family {family!r}; known: {list(MODEL_FAMILIES)}")
    opts = normalise_options(family, options)
    return ModelSpec(family, layers, num_classes, in_channels, image_size, opts).build()


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of trainable parameter values of ``model`` (for cross-checking arch.py)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "BUILDERS",
    "BasicBlock",
    "FlexModel",
    "FlexResNet",
    "FlexViT",
    "Head",
    "ModelSpec",
    "Stem",
    "build_model",
    "trainable_parameter_count",
]
