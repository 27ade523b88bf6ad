"""Shared factories for the algorithm-core tests: tiny models and a learnable dataset."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils.data import TensorDataset

from flextrain.core.models import ModelSpec

BlobsFactory = Callable[..., tuple[TensorDataset, TensorDataset]]


def make_blobs(
    n_train: int = 320,
    n_test: int = 200,
    classes: int = 4,
    channels: int = 1,
    size: int = 8,
    noise: float = 0.8,
    seed: int = 0,
) -> tuple[TensorDataset, TensorDataset]:
    """A learnable image task: each class is a fixed random image plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, channels, size, size, generator=g)  # (C, ch, s, s)

    def draw(n: int) -> TensorDataset:
        y = torch.randint(0, classes, (n,), generator=g)  # (n,)
        x = prototypes[y] + noise * torch.randn(n, channels, size, size, generator=g)
        return TensorDataset(x, y)  # x: (n, ch, s, s)

    return draw(n_train), draw(n_test)


@pytest.fixture
def blobs() -> BlobsFactory:
    """Factory fixture for :func:`make_blobs`."""
    return make_blobs


def make_spec(
    layers: int = 8, num_classes: int = 4, in_channels: int = 1, image_size: int = 8
) -> ModelSpec:
    """A small model spec; ResNet-8 (K = 3) on 1x8x8 images by default."""
    return ModelSpec("resnet", layers, num_classes, in_channels, image_size)


@pytest.fixture
def spec() -> ModelSpec:
    """ResNet-8 (K = 3), 4 classes, 1x8x8 inputs."""
    return make_spec()
