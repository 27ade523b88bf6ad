"""Depth-flexible models: CIFAR ResNets here, the builder of every family, ModelSpec.

FlexTrain (arXiv 2310.20457, Sec. 3) trains one residual network whose sub-model of
depth k -- the stem, the first k residual blocks and the one shared classifier head --
is a model on its own. Skipped blocks act as the identity. A skipped *downsampling*
block (first block of stages 2 and 3) still applies its parameter-free "option A"
shortcut (stride-2 subsample + zero-padded channels), so the head always sees 64
channels at the final resolution (the method doc marks this as inferred).

State-dict names are ``stem.*``, ``blocks.{i}.*`` and ``head.*``; the partition, merge
and wire code rely on these prefixes.

Two research options of the ResNet (``ModelSpec.options``, both off by default, which is
the paper's model; see :data:`flextrain.core.families.RESNET_RESEARCH_OPTIONS`):

``pool_at_prefix``
    A prefix that ends before the last stage is pooled at its own resolution. By
    default the skipped downsampling blocks' shortcuts subsample the map first: a
    ResNet prefix ending in stage 1 pools every 4th row and column, 1/16 of its
    positions. With the option the head averages all positions of the prefix's map and
    places its channels where the shortcuts' zero padding would (no tensors change).
``stage_adapters``
    The head holds one adapter per stage s before the last, applied to the pooled
    features of a prefix that ends in stage s. 1 (``linear``): a bias-free linear map
    ``C_s -> 64`` used instead of the zero padding (``head.adapters.{s}.weight``:
    16 x 64 + 32 x 64 = 3,072 values). 2 (``affine``): a per-channel scale and shift
    before the padding (``head.adapters.{s}.weight`` and ``.bias`` of ``C_s`` values:
    2 x (16 + 32) = 96 values). Both start as the identity (the model's outputs equal
    the plain model's at initialisation) and travel with the head, so every tier holds
    and uploads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import torch
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


def channel_offset(c_in: int, c_out: int) -> int:
    """Where the option-A shortcuts put ``c_in`` channels inside ``c_out``: the first
    channel's index after every skipped downsampling block padded its zeros (each pads
    ``(out - in) // 2`` channels in front), e.g. 16 -> 64 through 32: 8 + 16 = 24."""
    offset, c = 0, c_in
    for width in STAGE_CHANNELS:
        if width > c:
            offset += (width - c) // 2
            c = width
    if c != c_out:
        raise ValueError(f"no chain of stage widths takes {c_in} channels to {c_out}")
    return offset


#: Kinds of ``stage_adapters`` by option value (0: none).
ADAPTER_KINDS: Final[dict[int, str]] = {1: "linear", 2: "affine"}


class ChannelAffine(nn.Module):
    """``x * weight + bias`` per channel of pooled features ``(B, C)``; starts as identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight + self.bias  # (B, C)


class Head(nn.Module):
    """The one shared classifier: global average pool + Linear(64 -> classes).

    With ``stage_adapters`` (1 linear, 2 affine; see the module docstring) it also holds
    one adapter per stage before the last (:meth:`embed` uses it for a prefix ending in
    that stage).
    """

    def __init__(self, features: int, num_classes: int, *, stage_adapters: int = 0) -> None:
        super().__init__()
        if stage_adapters not in (0, *ADAPTER_KINDS):
            raise ValueError(f"stage_adapters must be one of 0, 1, 2, got {stage_adapters!r}")
        self.features = features
        self.fc = nn.Linear(features, num_classes)
        self.adapter_kind = ADAPTER_KINDS.get(stage_adapters)
        self.adapters: nn.ModuleList | None = None
        if stage_adapters:
            adapters: list[nn.Module] = []
            for width in STAGE_CHANNELS[:-1]:
                if self.adapter_kind == "affine":
                    adapters.append(ChannelAffine(width))
                    continue
                # Draws no random numbers: the rest of the model initialises exactly as
                # without adapters from the same seed.
                with torch.random.fork_rng(devices=[]):
                    lin = nn.Linear(width, features, bias=False)
                with torch.no_grad():  # start as the zero padding: identity into its slot
                    lin.weight.zero_()
                    off = channel_offset(width, features)
                    lin.weight[off : off + width].copy_(torch.eye(width))
                adapters.append(lin)
            self.adapters = nn.ModuleList(adapters)

    def embed(self, pooled: Tensor) -> Tensor:
        """Pooled features of any stage ``(B, C_s)`` -> the head's ``(B, 64)`` input:
        the stage's adapter when there is one, the shortcuts' zero padding otherwise."""
        c = pooled.shape[1]
        if c == self.features:
            return pooled
        if self.adapters is not None:
            out: Tensor = self.adapters[STAGE_CHANNELS.index(c)](pooled)  # (B, 64) or (B, C_s)
            if self.adapter_kind == "linear":
                return out
            pooled = out  # affine: rescaled, then padded like the plain head
        off = channel_offset(c, self.features)
        return F.pad(pooled, (off, self.features - c - off))  # (B, 64)

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

    ``stage_blocks`` (n1, n2, n3), each >= 1, replaces the n blocks per stage that
    ``layers`` implies (``layers`` is then ``2 * sum + 2``): the standalone models of
    other sizes the benchmarks compare prefixes with. ``pool_at_prefix`` and
    ``stage_adapters``: see the module docstring.
    """

    def __init__(
        self,
        layers: int,
        num_classes: int,
        in_channels: int,
        *,
        pool_at_prefix: bool = False,
        stage_adapters: int = 0,
        stage_blocks: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if stage_blocks is None:
            n = resnet_blocks_per_stage(layers)
            stage_blocks = (n, n, n)
        elif len(stage_blocks) != len(STAGE_CHANNELS) or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in stage_blocks
        ):
            raise ValueError(f"stage_blocks must be three ints >= 1, got {stage_blocks!r}")
        else:
            layers = 2 * sum(stage_blocks) + 2
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")
        self.layers = layers
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stage_blocks = tuple(stage_blocks)
        self.pool_at_prefix = pool_at_prefix
        self.stem = Stem(in_channels)
        blocks: list[BasicBlock] = []
        c_in = STEM_CHANNELS
        for stage, (c_out, n) in enumerate(zip(STAGE_CHANNELS, stage_blocks, strict=True)):
            for j in range(n):
                stride = 2 if stage > 0 and j == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(STAGE_CHANNELS[-1], num_classes, stage_adapters=stage_adapters)
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
        """Logits of the shared head from the features after ``depth`` blocks.

        Default (the paper's model): the skipped blocks' shortcuts carry ``h`` to 64
        channels at the final resolution -- subsampling it -- and the head pools that.
        ``pool_at_prefix`` pools ``h`` at its own resolution; ``stage_adapters`` maps
        the pooled channels with the stage's adapter instead of the zero padding.
        """
        head = cast(Head, self.head)
        if not self.pool_at_prefix and head.adapters is None:
            logits: Tensor = head(self.skip_rest(h, depth))  # (B, classes)
            return logits
        c = h.shape[1]
        if self.pool_at_prefix:
            pooled = h.mean(dim=(2, 3))  # (B, C_s): every position of the prefix's map
        else:
            off = channel_offset(c, head.features)
            pooled = self.skip_rest(h, depth).mean(dim=(2, 3))[:, off : off + c]  # (B, C_s)
        logits = head.fc(head.embed(pooled))  # (B, classes)
        return logits

    def forward_features(self, x: Tensor, depth: int | None = None) -> Tensor:
        """What the default head pools at depth ``depth``: (B, 64, H_final, W_final) features
        (with ``pool_at_prefix`` or ``stage_adapters`` the head reads the prefix's own map)."""
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
    o = dict(spec.options)
    return FlexResNet(
        spec.layers,
        spec.num_classes,
        spec.in_channels,
        pool_at_prefix=bool(o.get("pool_at_prefix", 0)),
        stage_adapters=int(o.get("stage_adapters", 0)),
    )


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
    "ADAPTER_KINDS",
    "BUILDERS",
    "BasicBlock",
    "ChannelAffine",
    "FlexModel",
    "FlexResNet",
    "FlexViT",
    "Head",
    "ModelSpec",
    "Stem",
    "build_model",
    "channel_offset",
    "trainable_parameter_count",
]
