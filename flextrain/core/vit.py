"""A depth-flexible Vision Transformer: every prefix of transformer blocks is a model.

The ViT family of :mod:`flextrain.core.families` in torch. The paper (arXiv 2310.20457,
Table 2) trains a 3-block ViT with FlexTrain: a transformer block maps tokens to tokens
of the same width, so the prefix of depth k -- patch embedding, blocks 1..k, the shared
head -- needs no adapter and a skipped block is simply the identity.

State-dict names are ``stem.*`` (position embedding and patch projection),
``blocks.{i}.*`` and ``head.*``, the prefixes the partition, merge and wire code use.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flextrain.core.families import ViTFamily, normalise_options
from flextrain.core.flexmodel import FlexModel


class PatchEmbedding(nn.Module):
    """Split the image into p x p patches, project each to D channels, add positions."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, tokens: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, tokens, embed_dim))
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)  # (B, D, S/p, S/p)
        tokens: Tensor = h.flatten(2).transpose(1, 2) + self.pos  # (B, N, D)
        return tokens


class SelfAttention(nn.Module):
    """Multi-head self-attention over the tokens (no mask: every token sees every token)."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)  # (B, N, 3, h, D/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, h, N, D/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, D/h)
        merged = out.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        projected: Tensor = self.proj(merged)  # (B, N, D)
        return projected


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, embed_dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = SelfAttention(embed_dim, heads)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, mlp_ratio * embed_dim)
        self.fc2 = nn.Linear(mlp_ratio * embed_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))  # (B, N, D)
        out: Tensor = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # (B, N, D)
        return out


class TokenHead(nn.Module):
    """The one shared classifier: mean of the tokens, LayerNorm, Linear(D -> classes)."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        pooled = self.norm(h.mean(dim=1))  # (B, D)
        logits: Tensor = self.fc(pooled)  # (B, classes)
        return logits


class FlexViT(FlexModel):
    """Vision Transformer runnable at any depth ``0..layers`` (``forward(x, depth=k)``).

    Args:
        layers: transformer blocks K.
        num_classes: outputs of the head.
        in_channels: image channels.
        image_size: side of the square images; ``patch_size`` must divide it.
        embed_dim, heads, patch_size, mlp_ratio: see :data:`flextrain.api.catalog.VIT_LIMITS`.
    """

    def __init__(
        self,
        layers: int,
        num_classes: int,
        in_channels: int,
        image_size: int,
        *,
        embed_dim: int,
        heads: int,
        patch_size: int,
        mlp_ratio: int,
    ) -> None:
        super().__init__()
        options = normalise_options(
            "vit",
            {"embed_dim": embed_dim, "heads": heads, "patch_size": patch_size, "mlp_ratio": mlp_ratio},
        )
        ViTFamily().check(layers, options, image_size)
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")
        self.layers = layers
        self.num_classes = num_classes
        self.in_channels = in_channels
        tokens = (image_size // patch_size) ** 2
        self.stem = PatchEmbedding(in_channels, embed_dim, patch_size, tokens)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, heads, mlp_ratio) for _ in range(layers)
        )
        self.head = TokenHead(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(cast(PatchEmbedding, self.stem).pos, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)


__all__ = ["FlexViT", "PatchEmbedding", "SelfAttention", "TokenHead", "TransformerBlock"]
