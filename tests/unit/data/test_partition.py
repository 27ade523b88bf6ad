"""Partitioners: IID and Dirichlet shards of a training set."""

from __future__ import annotations

import numpy as np
import pytest

from flextrain.data import (
    partition,
    partition_dirichlet,
    partition_iid,
    shard_for,
    shard_label_counts,
)


def balanced_labels(n: int = 2000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % classes)


def assert_exact_cover(shards: list[np.ndarray], n: int) -> None:
    """Every index in [0, n) appears in exactly one shard, once."""
    everything = np.concatenate(shards)
    assert everything.dtype == np.int64
    assert len(everything) == n
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --- IID ----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "shards"), [(100, 1), (100, 7), (1000, 20), (5, 5)])
def test_iid_covers_everything_with_near_equal_sizes(n: int, shards: int) -> None:
    parts = partition_iid(n, shards, seed=0)

    assert len(parts) == shards
    assert_exact_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_deterministic_for_a_seed_and_shuffled() -> None:
    a, b, c = (
        partition_iid(1000, 4, seed=1),
        partition_iid(1000, 4, seed=1),
        partition_iid(1000, 4, 2),
    )

    assert same(a, b)
    assert not same(a, c)
    assert not np.array_equal(a[0], np.arange(250))  # not contiguous blocks


def test_iid_shards_are_close_to_the_global_label_mix() -> None:
    labels = balanced_labels(5000)
    counts = shard_label_counts(labels, partition(labels, 5, "iid", seed=0), 10)

    shares = counts / counts.sum(axis=1, keepdims=True)
    assert np.abs(shares - 0.1).max() < 0.04


# --- Dirichlet ----------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5, 1.0, 100.0])
@pytest.mark.parametrize("shards", [2, 10, 20])
def test_dirichlet_covers_every_example_once_and_leaves_no_shard_empty(
    alpha: float, shards: int
) -> None:
    labels = balanced_labels(1000)

    parts = partition_dirichlet(labels, shards, alpha, seed=0)

    assert len(parts) == shards
    assert_exact_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 1
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no duplicates


def test_dirichlet_is_deterministic_for_a_seed_and_varies_with_it() -> None:
    labels = balanced_labels()

    a = partition_dirichlet(labels, 8, 0.5, seed=11)
    b = partition_dirichlet(labels, 8, 0.5, seed=11)
    c = partition_dirichlet(labels, 8, 0.5, seed=12)

    assert same(a, b)
    assert not same(a, c)


def test_tiny_alpha_gives_each_shard_almost_one_class() -> None:
    labels = balanced_labels(5000)

    counts = shard_label_counts(labels, partition_dirichlet(labels, 10, 0.01, seed=0), 10)

    dominant_share = counts.max(axis=1) / counts.sum(axis=1)
    assert np.median(dominant_share) > 0.95
    classes_present = (counts > 0).sum(axis=1)
    assert np.median(classes_present) <= 2


def test_huge_alpha_is_close_to_iid() -> None:
    labels = balanced_labels(5000)

    counts = shard_label_counts(labels, partition_dirichlet(labels, 5, 1000.0, seed=0), 10)

    shares = counts / counts.sum(axis=1, keepdims=True)
    assert np.abs(shares - 0.1).max() < 0.04
    sizes = counts.sum(axis=1)
    assert sizes.max() / sizes.min() < 1.2


def test_skew_grows_as_alpha_shrinks() -> None:
    labels = balanced_labels(5000)

    def mean_dominant_share(alpha: float) -> float:
        counts = shard_label_counts(labels, partition_dirichlet(labels, 10, alpha, seed=3), 10)
        return float((counts.max(axis=1) / counts.sum(axis=1)).mean())

    assert mean_dominant_share(0.05) > mean_dominant_share(0.5) > mean_dominant_share(50.0)


def test_min_size_is_honoured_even_when_draws_leave_shards_short() -> None:
    labels = balanced_labels(1000)

    parts = partition_dirichlet(labels, 20, 0.01, seed=0, min_size=25)

    assert_exact_cover(parts, 1000)
    assert min(len(p) for p in parts) >= 25


def test_repair_moves_single_class_blocks_so_skew_survives() -> None:
    # Two classes, many shards, tiny alpha: most draws leave shards empty.
    labels = np.array([0] * 50 + [1] * 50)

    parts = partition_dirichlet(labels, 6, 0.001, seed=0, min_size=5)

    assert_exact_cover(parts, 100)
    counts = shard_label_counts(labels, parts, 2)
    assert np.all(counts.sum(axis=1) >= 5)
    assert np.all(counts.min(axis=1) == 0)  # still one class per shard


def test_unused_label_values_and_unsorted_labels_are_fine() -> None:
    labels = np.array([7, 3, 7, 3, 99, 99, 3, 7] * 10)

    assert_exact_cover(partition_dirichlet(labels, 4, 0.3, seed=0), 80)


# --- dispatcher and shard_for -------------------------------------------------------


@pytest.mark.parametrize(("scheme", "alpha"), [("iid", None), ("iid", 0.5), ("dirichlet", 0.3)])
def test_shard_for_equals_the_indexed_partition(scheme: str, alpha: float | None) -> None:
    labels = balanced_labels(600)
    parts = partition(labels, 6, scheme, alpha, seed=5)

    for index in range(6):
        np.testing.assert_array_equal(shard_for(labels, scheme, alpha, 5, 6, index), parts[index])


def test_partition_dispatches_to_the_named_scheme() -> None:
    labels = balanced_labels(300)

    assert same(partition(labels, 3, "iid", seed=2), partition_iid(300, 3, seed=2))
    assert same(
        partition(labels, 3, "dirichlet", 0.2, seed=2), partition_dirichlet(labels, 3, 0.2, seed=2)
    )


def test_labels_may_be_a_plain_list() -> None:
    assert_exact_cover(partition([0, 1, 2, 0, 1, 2], 2, "dirichlet", 1.0), 6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda y: partition_dirichlet(y, 3, 0.0), "alpha must be > 0"),
        (lambda y: partition_dirichlet(y, 3, -1.0), "alpha must be > 0"),
        (lambda y: partition_dirichlet(y, 3, float("nan")), "alpha must be > 0"),
        (lambda y: partition_dirichlet(y, 0, 0.5), "num_shards must be >= 1"),
        (lambda y: partition_dirichlet(y, 11, 0.5), "only 10 examples"),
        (lambda y: partition_dirichlet(y, 3, 0.5, min_size=4), "only 10 examples"),
        (lambda y: partition_dirichlet(y, 3, 0.5, min_size=0), "min_size"),
        (lambda y: partition_iid(10, 0), "num_shards must be >= 1"),
        (lambda y: partition_iid(10, 11), "only 10 examples"),
        (lambda y: partition(y, 2, "dirichlet"), "needs alpha"),
        (lambda y: partition(y, 2, "shards"), "unknown partition scheme"),
        (lambda y: partition(y.astype(float), 2, "iid"), "integers"),
        (lambda y: partition(y.reshape(2, 5), 2, "iid"), "vector"),
        (lambda y: partition(y[:0], 1, "iid"), "non-empty"),
        (lambda y: shard_for(y, "iid", None, 0, 2, 2), r"shard index must be in \[0, 2\)"),
        (lambda y: shard_for(y, "iid", None, 0, 2, -1), "shard index"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(call, message: str) -> None:
    labels = np.arange(10) % 3

    with pytest.raises(ValueError, match=message):
        call(labels)
