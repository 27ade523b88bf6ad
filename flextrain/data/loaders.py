"""Deterministic mini-batch loaders over a dataset or one shard of it.

:func:`make_loader` returns a ``torch.utils.data.DataLoader`` whose order (and
augmentation) is a function of ``seed`` alone: the same seed gives the same batches,
also across processes and for any ``num_workers``. Iterating it again continues the
same seeded stream, so epoch 2 differs from epoch 1 but every run repeats both.

For an :class:`~flextrain.data.datasets.ImageDataset` the sampler hands out whole
batches (positions + an augmentation seed drawn in the calling process): batches are
cut with one tensor index and augmented in one vectorised call (about 0.2 s per
CIFAR-10 epoch plain, 1 s augmented, on one CPU thread), identically for any
``num_workers``. Any other ``Dataset`` goes through the stock ``DataLoader`` path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from flextrain.data.datasets import ImageDataset

#: Zero padding on each side before the random crop (the usual CIFAR recipe).
CROP_PADDING = 4

_BatchKey = tuple[torch.Tensor, int]


def make_loader(
    dataset: Dataset[Any],
    indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    *,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    augment: bool | None = None,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """A loader over ``dataset`` (or the examples ``indices`` of it), deterministic for ``seed``.

    Args:
        dataset: any map-style dataset; an ``ImageDataset`` takes the fast path.
        indices: positions in ``dataset`` to use (e.g. a trainer's shard); ``None``
            means all.
        batch_size: examples per batch (the last one may be smaller unless
            ``drop_last``).
        shuffle: draw a new seeded permutation at each pass (training); ``False``
            keeps ``indices`` order (evaluation).
        seed: seed of the shuffling, augmentation and worker RNGs.
        num_workers: worker processes (0 loads in the calling process).
        drop_last: drop a final incomplete batch.
        augment: random crop (padding :data:`CROP_PADDING`) + horizontal flip per
            batch; ``None`` follows ``dataset.augment``. Needs an ``ImageDataset``.
        pin_memory: pin batches for faster host-to-GPU copies.

    Yields batches ``(images, labels)``: float32 B x C x H x W and int64 B for an
    ``ImageDataset``; whatever the default collation builds otherwise. Either way
    ``len(loader)`` counts batches and ``len(loader.dataset)`` the examples covered.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    size = len(dataset)  # type: ignore[arg-type]
    positions = None if indices is None else _as_positions(indices, size)

    generator = torch.Generator()
    generator.manual_seed(seed)
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "generator": generator,
        "pin_memory": pin_memory,
        "worker_init_fn": _seed_worker,
    }
    if isinstance(dataset, ImageDataset):
        use_augment = dataset.augment if augment is None else augment
        view = _BatchView(dataset, positions, augment=use_augment)
        plan = _BatchPlan(len(view), batch_size, shuffle, drop_last, generator)
        return DataLoader(view, batch_size=None, sampler=plan, collate_fn=_as_is, **common)

    if augment:
        raise ValueError("augment needs an ImageDataset (from load_dataset)")
    source = dataset if positions is None else Subset(dataset, positions.tolist())
    return DataLoader(source, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **common)


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING
) -> torch.Tensor:
    """Random crop of each image after zero padding, then a coin-flip mirror.

    ``images`` is B x C x H x W; the result has the same shape and is a new tensor.
    Zero padding happens after normalisation, so the border is the mean colour.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))  # B x C x H+2p x W+2p
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = top[:, None] + torch.arange(h)  # B x H
    cols = left[:, None] + torch.arange(w)  # B x W
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # mirror = read columns backwards
    batch = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # B x H x W x C
    return out.permute(0, 3, 1, 2).contiguous()  # B x C x H x W


class _BatchView(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Map-style dataset whose key is a whole batch: (positions, augmentation seed)."""

    def __init__(self, data: ImageDataset, positions: torch.Tensor | None, *, augment: bool):
        self.images = data.images
        self.labels = data.labels
        self.positions = positions
        self.augment = augment

    def __len__(self) -> int:
        """Number of examples (not batches) the loader covers."""
        return len(self.labels) if self.positions is None else len(self.positions)

    def __getitem__(self, key: _BatchKey) -> tuple[torch.Tensor, torch.Tensor]:
        batch, aug_seed = key
        index = batch if self.positions is None else self.positions[batch]
        images = self.images[index]  # B x C x H x W (a copy)
        if self.augment:
            images = random_crop_flip(images, torch.Generator().manual_seed(aug_seed))
        return images, self.labels[index]


class _BatchPlan(Sampler[_BatchKey]):
    """Yields (batch positions, augmentation seed); both drawn from one seeded generator.

    Drawing augmentation seeds here, in the calling process, keeps augmentation the
    same whatever the number of workers.
    """

    def __init__(
        self, size: int, batch_size: int, shuffle: bool, drop_last: bool, gen: torch.Generator
    ):
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = gen

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self.batch_size
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[_BatchKey]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=self.generator)
        else:
            order = torch.arange(self.size)
        seeds = torch.randint(0, 2**62, (len(self),), generator=self.generator).tolist()
        for i, aug_seed in enumerate(seeds):
            yield order[i * self.batch_size : (i + 1) * self.batch_size], aug_seed


def _as_positions(indices: Sequence[int] | np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Indices as an int64 tensor, checked to lie in [0, size)."""
    positions = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
    if len(positions) and (positions.min() < 0 or positions.max() >= size):
        raise IndexError(
            f"indices must lie in [0, {size}), got {positions.min()}..{positions.max()}"
        )
    return positions


def _as_is(batch: Any) -> Any:
    """Collate function of the fast path: the batch is already built."""
    return batch


def _seed_worker(worker_id: int) -> None:
    """Seed numpy in a worker from torch's per-worker seed (torch seeds itself and random)."""
    np.random.seed(torch.initial_seed() % 2**32)
