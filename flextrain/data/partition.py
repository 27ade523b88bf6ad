"""Split a training set into one shard per trainer: IID or label-skewed (Dirichlet).

Every function is a pure function of its arguments: each trainer of a job computes
the whole partition from the shared ``labels`` and ``seed`` and keeps its own shard
(:func:`shard_for`), so no coordinator has to hand out indices.

* IID: a seeded permutation cut into near-equal parts (sizes differ by at most one),
  as in the paper's federated setup.
* Dirichlet: for each class, shares over the shards are drawn from
  Dirichlet(alpha, ..., alpha) and the class's examples are cut accordingly - the
  usual label-skew benchmark of federated learning (Hsu, Qi and Brown, 2019,
  arXiv 1909.06335), with NIID-Bench's cap on shard sizes. Small alpha gives shards
  dominated by one or two classes; large alpha approaches IID.

Shards are int64 index arrays into ``labels``, sorted ascending (loaders shuffle);
together they hold every index exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import numpy as np

Scheme = Literal["iid", "dirichlet"]
#: Partition schemes :func:`partition` understands.
SCHEMES: Final[tuple[str, ...]] = ("iid", "dirichlet")


def partition_iid(num_examples: int, num_shards: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(num_examples)`` with ``seed`` and cut it into ``num_shards`` parts.

    Shard sizes differ by at most one (the first ``num_examples % num_shards``
    shards hold one more).
    """
    _check_counts(num_examples, num_shards, min_size=1)
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_shards)]


def partition_dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_shards: int,
    alpha: float,
    seed: int = 0,
    *,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Label-skewed partition: each class is split over shards by Dirichlet(alpha) shares.

    Classes are visited in a seeded random order. Each class's examples are cut by
    shares drawn from Dirichlet(alpha) over the shards that still hold fewer than
    ``len(labels) / num_shards`` examples (the size cap of NIID-Bench, Li et al.,
    ICDE 2022, arXiv 2102.02079; drawing over the open shards equals masking and
    renormalising a full draw). The cap keeps shard sizes workable, so that even
    ``alpha = 0.01`` gives about one class per shard instead of a few huge shards and
    many empty ones.

    When there are fewer classes than shards (or very few examples) some shards can
    still end up under ``min_size``; they are repaired by moving examples from the
    largest shard, all of its most frequent class (so the skew survives) and half of
    that class's block when that is more than the shortfall.

    Deterministic for ``seed``; every index of ``labels`` lands in exactly one shard.

    Raises:
        ValueError: ``alpha <= 0``, ``num_shards < 1``, ``min_size < 1``, labels not a
            non-empty integer vector, or fewer than ``num_shards * min_size`` examples.
    """
    y = _as_labels(labels)
    if not alpha > 0:  # also rejects NaN
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    _check_counts(len(y), num_shards, min_size)

    rng = np.random.default_rng(seed)
    cap = len(y) / num_shards
    parts: list[list[np.ndarray]] = [[] for _ in range(num_shards)]
    sizes = np.zeros(num_shards, dtype=np.int64)
    for c in rng.permutation(np.unique(y)):
        members = rng.permutation(np.flatnonzero(y == c))
        open_shards = np.flatnonzero(sizes < cap)  # never empty: examples remain
        shares = rng.dirichlet(np.full(len(open_shards), float(alpha)))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for shard, piece in zip(open_shards, np.split(members, cuts), strict=True):
            parts[shard].append(piece)
            sizes[shard] += len(piece)
    shards = [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]
    return [np.sort(s).astype(np.int64) for s in _repair(shards, y, min_size)]


def _repair(shards: list[np.ndarray], labels: np.ndarray, min_size: int) -> list[np.ndarray]:
    """Move single-class blocks from the largest shard to shards under ``min_size``."""
    shards = list(shards)
    while True:
        sizes = [len(s) for s in shards]
        short = int(np.argmin(sizes))
        if sizes[short] >= min_size:
            return shards
        donor = int(np.argmax(sizes))  # holds more than min_size: the total suffices
        donor_labels = labels[shards[donor]]
        values, counts = np.unique(donor_labels, return_counts=True)
        common = values[np.argmax(counts)]
        move = min(sizes[donor] - min_size, max(min_size - sizes[short], int(counts.max()) // 2))
        # The most frequent class first, then the rest, each in shard order.
        take = np.argsort(donor_labels != common, kind="stable")[:move]
        shards[short] = np.concatenate([shards[short], shards[donor][take]])
        shards[donor] = np.delete(shards[donor], take)


def partition(
    labels: Sequence[int] | np.ndarray,
    num_shards: int,
    scheme: Scheme | str = "iid",
    alpha: float | None = None,
    seed: int = 0,
    *,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Partition ``labels``'s indices into ``num_shards`` shards with ``scheme``.

    ``alpha`` is required for ``"dirichlet"`` and ignored for ``"iid"`` (so a job spec
    may carry a default alpha whatever its scheme). ``min_size`` applies to Dirichlet
    (IID shards always hold at least one example).
    """
    y = _as_labels(labels)
    if scheme == "iid":
        return partition_iid(len(y), num_shards, seed)
    if scheme == "dirichlet":
        if alpha is None:
            raise ValueError("scheme 'dirichlet' needs alpha (e.g. 0.5)")
        return partition_dirichlet(y, num_shards, alpha, seed, min_size=min_size)
    raise ValueError(f"unknown partition scheme {scheme!r}; known: {list(SCHEMES)}")


def shard_for(
    labels: Sequence[int] | np.ndarray,
    scheme: Scheme | str,
    alpha: float | None,
    seed: int,
    num_shards: int,
    index: int,
    *,
    min_size: int = 1,
) -> np.ndarray:
    """The shard of the trainer with completion index ``index``: ``partition(...)[index]``."""
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index must be in [0, {num_shards}), got {index}")
    return partition(labels, num_shards, scheme, alpha, seed, min_size=min_size)[index]


def shard_label_counts(
    labels: Sequence[int] | np.ndarray,
    shards: Sequence[np.ndarray],
    num_classes: int | None = None,
) -> np.ndarray:
    """Examples of each class in each shard: int64 array ``num_shards x num_classes``.

    For reporting how skewed a partition is.
    """
    y = _as_labels(labels)
    if y.min() < 0:
        raise ValueError("shard_label_counts needs labels >= 0")
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    return np.stack([np.bincount(y[s], minlength=classes) for s in shards]).astype(np.int64)


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Labels as a non-empty 1-D integer numpy array."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels must be a non-empty vector, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y


def _check_counts(num_examples: int, num_shards: int, min_size: int) -> None:
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if num_examples < num_shards * min_size:
        raise ValueError(
            f"cannot give each of {num_shards} shards {min_size} example(s): "
            f"only {num_examples} examples"
        )
