"""The registry of depth-flexible model families, torch-free (the operator reads it).

FlexTrain (arXiv 2310.20457) needs one thing of a network: its *prefix* of depth k --
a stem, the first k of K blocks and one shared head -- is a model of its own. A family
says, without building a network, what its prefixes are: K, the state-dict names of
prefix k, parameters and multiply-accumulates per depth and the values kept for
backward (the memory estimate of ``depth: auto``, :mod:`flextrain.core.policy`).
The torch half -- the module that runs ``forward(x, depth=k)`` -- is registered per
family in :data:`flextrain.core.models.BUILDERS`; the vocabulary (names, limits) is
:mod:`flextrain.api.catalog`.

Families:

``resnet``
    CIFAR ResNet (:func:`flextrain.core.arch.profile`): ``layers`` is 8, 20, ..., 110;
    a manifest sets no options. The research options
    :data:`RESNET_RESEARCH_OPTIONS` (``pool_at_prefix``, ``stage_adapters``) exist for
    the benchmarks; value 0 is the paper's model and is dropped by
    :func:`normalise_options`, so a default spec's options stay empty.
``vit``
    Vision Transformer: ``layers`` is the number of transformer blocks K; options
    ``embed_dim`` D, ``heads`` h, ``patch_size`` p, ``mlp_ratio`` r (see
    :data:`flextrain.api.catalog.VIT_LIMITS`). Stem = patch embedding (a p x p
    convolution with stride p to D channels) plus a learned position embedding of the
    N = (S / p)^2 patch tokens; block = pre-norm multi-head self-attention and a GELU
    MLP of width r * D, each with a residual connection; head = mean of the tokens,
    LayerNorm, Linear(D -> classes). A skipped block is the identity, so every prefix
    ends in the same D-wide tokens the shared head reads.

ViT costs (per example, N tokens):

- parameters of a block: ``4 D^2 + 2 r D^2 + 9 D + r D`` (two LayerNorms, qkv and output
  projections with bias, the two MLP layers with bias);
- MACs of a block: ``N (4 D^2 + 2 r D^2)`` in the linear layers plus ``2 N^2 D`` for the
  attention scores and their weighted sum; the stem ``N D C p^2``; the head ``D classes``;
- kept for backward by a block: ``(8 + 2 r) N D + h N^2`` (LayerNorm inputs and outputs,
  q, k, v, the attention probabilities, the attention output, the residual sum, the MLP's
  hidden activations before and after GELU). An estimate: the attention kernel may keep
  less (fused) or a little more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from flextrain.api.catalog import (
    FAMILY_OPTIONS,
    MODEL_FAMILIES,
    VIT_DEFAULTS,
    num_blocks,
    vit_problem,
)
from flextrain.core import arch
from flextrain.core.arch import ArchProfile, Tensors, UnitCost

Options = tuple[tuple[str, int], ...]

#: Options of the ResNet family that the benchmarks set and a job's manifest cannot
#: (:data:`flextrain.api.catalog.FAMILY_OPTIONS` lists none for ``resnet``): name ->
#: allowed values; 0, the paper's model, is the default. See
#: :mod:`flextrain.core.models` for what they change.
RESNET_RESEARCH_OPTIONS: Final[dict[str, tuple[int, ...]]] = {
    "pool_at_prefix": (0, 1),
    "stage_adapters": (0, 1, 2),
}


def normalise_options(family: str, options: Mapping[str, int] | Options | None) -> Options:
    """The family's options as sorted (name, value) pairs, defaults filled in.

    ResNets take no options; a ViT takes ``embed_dim``, ``heads``, ``patch_size`` and
    ``mlp_ratio`` (missing ones default to :data:`~flextrain.api.catalog.VIT_DEFAULTS`).
    """
    given = dict(options or {})
    if family not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {list(MODEL_FAMILIES)}")
    known = list(FAMILY_OPTIONS[family])
    if family == "resnet":
        known += list(RESNET_RESEARCH_OPTIONS)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{family} takes no option(s) {unknown}; allowed: {known or 'none'}")
    if family == "vit":
        given = {**VIT_DEFAULTS, **given}
    if family == "resnet":
        for name, value in given.items():
            allowed = RESNET_RESEARCH_OPTIONS[name]
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
                raise ValueError(
                    f"resnet option {name} must be one of {list(allowed)}, got {value!r}"
                )
        given = {name: value for name, value in given.items() if value != 0}
    return tuple(sorted(given.items()))


class ModelFamily(Protocol):
    """What the rest of the system needs to know of a family before any torch code runs."""

    #: The family's name in manifests (``model.family``).
    name: str

    def check(self, layers: int, options: Options, image_size: int | None = None) -> None:
        """Raise ValueError naming the field when the shape is not allowed."""

    def profile(
        self, layers: int, num_classes: int, in_channels: int, image_size: int, options: Options
    ) -> ArchProfile:
        """Per-unit tensor names, parameters, MACs and activations; sums per depth."""


class ResNetFamily:
    """CIFAR ResNets (3 stages of basic blocks with parameter-free shortcuts)."""

    name = "resnet"

    def check(self, layers: int, options: Options, image_size: int | None = None) -> None:
        num_blocks("resnet", layers)
        for name, value in options:
            allowed = RESNET_RESEARCH_OPTIONS.get(name)
            if allowed is None:
                raise ValueError(
                    f"resnet takes no option {name!r}; research options: "
                    f"{list(RESNET_RESEARCH_OPTIONS)}"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
                raise ValueError(
                    f"resnet option {name} must be one of {list(allowed)}, got {value!r}"
                )

    def profile(
        self, layers: int, num_classes: int, in_channels: int, image_size: int, options: Options
    ) -> ArchProfile:
        self.check(layers, options)
        adapters = int(dict(options).get("stage_adapters", 0))
        return arch.profile(
            "resnet", layers, num_classes, in_channels, image_size, stage_adapters=adapters
        )


def _layer_norm(prefix: str, dim: int) -> Tensors:
    return ((f"{prefix}.weight", (dim,)), (f"{prefix}.bias", (dim,)))


def _linear(prefix: str, d_in: int, d_out: int) -> Tensors:
    return ((f"{prefix}.weight", (d_out, d_in)), (f"{prefix}.bias", (d_out,)))


def _count(tensors: Tensors) -> int:
    total = 0
    for _, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def _transformer_block(name: str, d: int, h: int, r: int, n: int) -> UnitCost:
    """One pre-norm transformer block of width ``d``, ``h`` heads, MLP ``r * d``, ``n`` tokens."""
    tensors: Tensors = (
        *_layer_norm(f"{name}.norm1", d),
        *_linear(f"{name}.attn.qkv", d, 3 * d),
        *_linear(f"{name}.attn.proj", d, d),
        *_layer_norm(f"{name}.norm2", d),
        *_linear(f"{name}.fc1", d, r * d),
        *_linear(f"{name}.fc2", r * d, d),
    )
    return UnitCost(
        name=name,
        params=_count(tensors),
        bn_channels=0,
        bn_layers=0,
        macs=n * (4 * d * d + 2 * r * d * d) + 2 * n * n * d,
        activations=(8 + 2 * r) * n * d + h * n * n,
        out_shape=(n, d, 1),
        tensors=tensors,
    )


class ViTFamily:
    """Vision Transformers whose prefixes are their first k transformer blocks."""

    name = "vit"

    def check(self, layers: int, options: Options, image_size: int | None = None) -> None:
        problem = vit_problem(layers, dict(options), image_size)
        if problem is not None:
            raise ValueError(problem)

    def profile(
        self, layers: int, num_classes: int, in_channels: int, image_size: int, options: Options
    ) -> ArchProfile:
        self.check(layers, options, image_size)
        for field, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        o = dict(options)
        d, h, p, r = o["embed_dim"], o["heads"], o["patch_size"], o["mlp_ratio"]
        side = image_size // p
        n = side * side  # tokens
        stem_t: Tensors = (
            ("stem.pos", (1, n, d)),
            ("stem.proj.weight", (d, in_channels, p, p)),
            ("stem.proj.bias", (d,)),
        )
        stem = UnitCost(
            name="stem",
            params=_count(stem_t),
            bn_channels=0,
            bn_layers=0,
            macs=n * d * in_channels * p * p,
            activations=in_channels * image_size * image_size + n * d,
            out_shape=(n, d, 1),
            tensors=stem_t,
        )
        blocks = [_transformer_block(f"blocks.{i}", d, h, r, n) for i in range(layers)]
        head_t: Tensors = (*_layer_norm("head.norm", d), *_linear("head.fc", d, num_classes))
        head = UnitCost(
            name="head",
            params=_count(head_t),
            bn_channels=0,
            bn_layers=0,
            macs=d * num_classes,
            activations=2 * d + num_classes,
            out_shape=(num_classes, 1, 1),
            tensors=head_t,
        )
        return ArchProfile(
            family="vit",
            layers=layers,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            stem=stem,
            blocks=tuple(blocks),
            head=head,
            options=options,
        )


#: Every family by name; :data:`flextrain.api.catalog.MODEL_FAMILIES` lists the same names.
FAMILIES: Final[dict[str, ModelFamily]] = {"resnet": ResNetFamily(), "vit": ViTFamily()}


def family(name: str) -> ModelFamily:
    """The registered family ``name``; ValueError naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {list(FAMILIES)}") from None


def profile(
    family_name: str,
    layers: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    options: Mapping[str, int] | Options | None = None,
) -> ArchProfile:
    """Analytic per-depth costs of a model of any family (options default per family)."""
    opts = normalise_options(family_name, options)
    return family(family_name).profile(layers, num_classes, in_channels, image_size, opts)
