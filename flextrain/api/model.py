"""The global model of a FlexTrainJob: `spec.model`, one of the families of
`flextrain.api.catalog.MODEL_FAMILIES`, with each family's own limits.

`layers` sizes every family (a ResNet's weight layers, a ViT's transformer blocks);
family-specific fields live in a sub-object named after the family (`vit`). The torch-free
costs and the torch modules of each family are in `flextrain.core.families` and
`flextrain.core.models`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from flextrain.api.catalog import (
    RESNET_LAYERS,
    VIT_BLOCKS,
    VIT_DEFAULTS,
    VIT_LIMITS,
    num_blocks,
)
from flextrain.api.common import ApiModel, FieldProblem, cel, rules_config


def blocks_cel(model: str) -> str:
    """CEL for the number of blocks K of the model object at `model`."""
    # num_blocks in CEL: a vit's layers are its blocks; a resnet has 3 stages of
    # (layers - 2) / 6 blocks.
    return f"({model}.family == 'vit' ? {model}.layers : (({model}.layers - 2) / 6 * 3))"


class ViTSpec(ApiModel):
    """The shape of a Vision Transformer (model.family vit); model.layers is its number
    of transformer blocks."""

    model_config = rules_config(
        cel(
            "self.embedDim % self.heads == 0",
            "vit.embedDim must be a multiple of vit.heads (each head gets embedDim / heads "
            "channels)",
            field_path=".embedDim",
        )
    )

    embed_dim: int = Field(
        default=VIT_DEFAULTS["embed_dim"],
        ge=VIT_LIMITS["embed_dim"].low,
        le=VIT_LIMITS["embed_dim"].high,
        description=f"embedDim: width D of every token, {VIT_LIMITS['embed_dim']}; a multiple "
        f"of heads (default {VIT_DEFAULTS['embed_dim']}).",
    )
    heads: int = Field(
        default=VIT_DEFAULTS["heads"],
        ge=VIT_LIMITS["heads"].low,
        le=VIT_LIMITS["heads"].high,
        description=f"heads: attention heads per block, {VIT_LIMITS['heads']} "
        f"(default {VIT_DEFAULTS['heads']}).",
    )
    patch_size: int = Field(
        default=VIT_DEFAULTS["patch_size"],
        ge=VIT_LIMITS["patch_size"].low,
        le=VIT_LIMITS["patch_size"].high,
        description=f"patchSize: side of the square patches in pixels, "
        f"{VIT_LIMITS['patch_size']}; must divide the dataset's image size (8 for digits and "
        f"synthetic, 28 for fashion-mnist, 32 for cifar10/cifar100); the model sees "
        f"(size / patchSize)^2 tokens (default {VIT_DEFAULTS['patch_size']}).",
    )
    mlp_ratio: int = Field(
        default=VIT_DEFAULTS["mlp_ratio"],
        ge=VIT_LIMITS["mlp_ratio"].low,
        le=VIT_LIMITS["mlp_ratio"].high,
        description=f"mlpRatio: width of each block's MLP as a multiple of embedDim, "
        f"{VIT_LIMITS['mlp_ratio']} (default {VIT_DEFAULTS['mlp_ratio']}).",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ViTSpec:
        if self.embed_dim % self.heads:
            raise FieldProblem(
                ("embedDim",),
                self.embed_dim,
                f"embedDim {self.embed_dim} must be a multiple of heads {self.heads} (each head "
                f"gets embedDim / heads channels), e.g. {self.heads * max(1, self.embed_dim // self.heads)}",
            )
        return self

    def options(self) -> dict[str, int]:
        """The options of the ViT family (``flextrain.api.catalog.VIT_LIMITS`` names)."""
        return {
            "embed_dim": self.embed_dim,
            "heads": self.heads,
            "patch_size": self.patch_size,
            "mlp_ratio": self.mlp_ratio,
        }


class ModelSpec(ApiModel):
    """The global model every tier trains a prefix of."""

    model_config = rules_config(
        cel(
            f"self.family != 'resnet' || self.layers in {list(RESNET_LAYERS)}",
            f"model.layers of a resnet must be one of {', '.join(map(str, RESNET_LAYERS))}",
            field_path=".layers",
        ),
        cel(
            f"self.family != 'vit' || self.layers <= {VIT_BLOCKS.high}",
            f"model.layers of a vit is its number of transformer blocks, {VIT_BLOCKS}",
            field_path=".layers",
        ),
        cel(
            "self.family == 'vit' || !has(self.vit)",
            "model.vit is allowed only with family vit",
            field_path=".vit",
        ),
    )

    family: Literal["resnet", "vit"] = Field(
        default="resnet",
        description="family: model family; resnet = CIFAR-style ResNet with parameter-free "
        "shortcuts and one shared head; vit = Vision Transformer (patch embedding, "
        "transformer blocks, one shared head on the mean token).",
    )
    layers: int = Field(
        default=20,
        ge=1,
        le=max(RESNET_LAYERS),
        description="layers: resnet: weight layers (6n+2: 8, 20, 32, 44, 56 or 110; the model "
        f"has 3n residual blocks); vit: transformer blocks, {VIT_BLOCKS}. The number of "
        "blocks is the deepest depth a tier can train.",
    )
    vit: ViTSpec | None = Field(
        default=None,
        description="vit: the transformer's shape (embedDim, heads, patchSize, mlpRatio); only "
        "with family vit; defaults apply when omitted.",
    )
    num_classes: int | None = Field(
        default=None,
        ge=2,
        le=1_000_000,
        description="numClasses: outputs of the classifier head, 2 to 1000000; defaults to the "
        "dataset's number of classes.",
    )

    @model_validator(mode="after")
    def _shape_fits_family(self) -> ModelSpec:
        if self.family == "resnet" and self.layers not in RESNET_LAYERS:
            raise FieldProblem(
                ("layers",),
                self.layers,
                f"a resnet has {', '.join(map(str, RESNET_LAYERS))} layers (6n+2), got "
                f"{self.layers}",
            )
        if self.family == "vit" and self.layers not in VIT_BLOCKS:
            raise FieldProblem(
                ("layers",),
                self.layers,
                f"a vit's layers are its transformer blocks, {VIT_BLOCKS}, got {self.layers}",
            )
        if self.family != "vit" and self.vit is not None:
            raise FieldProblem(
                ("vit",), self.vit.to_wire(), f"model.vit is allowed only with family vit, not {self.family}"
            )
        return self

    @property
    def num_blocks(self) -> int:
        """Blocks K of the model (residual or transformer)."""
        return num_blocks(self.family, self.layers)

    @property
    def options(self) -> dict[str, int]:
        """The family's options (empty for resnet; the ViT's shape, defaults filled in)."""
        if self.family == "vit":
            return (self.vit or ViTSpec()).options()
        return {}


__all__ = ["ModelSpec", "ViTSpec", "blocks_cel"]
