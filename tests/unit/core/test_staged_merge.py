"""Staged updates: folded piece by piece as they arrive, applied only at commit."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor

from flextrain.core.merge import (
    STRATEGIES,
    AccumulatorClosed,
    MergeError,
    NonFiniteError,
    get_strategy,
    merge,
)
from flextrain.core.merge.base import Accumulator, Piece

#: The strategies that fold pieces into running sums (LinearAccumulator).
BOTH = ["pad", "holder-weighted"]
#: Every strategy, including those that stage with the default assembling update.
ALL = list(STRATEGIES)


def make_global() -> dict[str, Tensor]:
    torch.manual_seed(0)
    return {
        "big": torch.randn(40_000),  # above the one-fused-pass threshold
        "w": torch.randn(3, 5),
        "b": torch.randn(7),
        "deep": torch.randn(2, 2),
        "n": torch.tensor(5, dtype=torch.int64),
    }


def update(seed: int, keys: tuple[str, ...] = ("big", "w", "b", "n")) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    g = make_global()
    return {k: (g[k] + torch.randn_like(g[k]) if g[k].is_floating_point() else g[k] + seed) for k in keys}


def layout_of(tensors: Mapping[str, Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}


def pieces_of(tensors: Mapping[str, Tensor], cut: int) -> list[list[Piece]]:
    """The tensors' flat values in order, cut into pieces of at most `cut` elements,
    grouped as a stream of chunks would deliver them (a chunk may hold several pieces)."""
    flat: list[Piece] = []
    for key, value in tensors.items():
        v = value.reshape(-1)
        for start in range(0, max(v.numel(), 1), cut):
            flat.append((key, start, v[start : start + cut]))
    return [flat[i : i + 3] for i in range(0, len(flat), 3)]


def staged_add(acc: Accumulator, tensors: Mapping[str, Tensor], n: int, cut: int) -> None:
    staged = acc.stage(layout_of(tensors), n)
    for chunk in pieces_of(tensors, cut):
        staged.write(chunk)
    staged.commit()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("cut", [3, 7, 1000, 100_000])
def test_staged_updates_merge_bitwise_like_whole_ones(name: str, cut: int) -> None:
    updates = [(update(1), 3), (update(2, ("w", "n")), 5), (update(3), 2)]
    acc = get_strategy(name).begin(make_global(), expected_clients=3)
    for tensors, n in updates:
        staged_add(acc, tensors, n, cut)
    staged = acc.finish()
    whole = merge(name, make_global(), updates)
    assert staged.keys() == whole.keys()
    for key in whole:
        assert staged[key].dtype == whole[key].dtype and torch.equal(staged[key], whole[key]), key


@pytest.mark.parametrize("name", ALL)
def test_half_precision_pieces_are_summed_in_float32(name: str) -> None:
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in update(1).items()}
    acc = get_strategy(name).begin(make_global(), expected_clients=2)
    staged_add(acc, tensors, 4, 999)
    staged_add(acc, tensors, 2, 50_000)
    result = acc.finish()
    expected = merge(name, make_global(), [(tensors, 4), (tensors, 2)])
    for key in expected:
        assert result[key].dtype == make_global()[key].dtype
        assert torch.equal(result[key], expected[key]), key


def _failures() -> list[tuple[str, object]]:
    return [
        ("nan", lambda s, t: s.write([("b", 0, torch.tensor([1.0, float("nan")]))])),
        ("order", lambda s, t: s.write([("b", 3, t["b"][3:])])),
        ("too long", lambda s, t: s.write([("b", 0, torch.zeros(8))])),
        ("dtype", lambda s, t: s.write([("b", 0, t["b"].double())])),
        ("unannounced", lambda s, t: s.write([("deep", 0, torch.zeros(4))])),
        ("not flat", lambda s, t: s.write([("w", 0, t["w"].view(3, 5))])),
        ("incomplete", lambda s, t: (s.write([("b", 0, t["b"][:3])]), s.commit())),
    ]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("what", "fail"), _failures(), ids=[f[0] for f in _failures()])
def test_a_failed_stage_leaves_the_accumulator_exactly_as_it_was(name: str, what: str, fail: object) -> None:
    first, bad, last = update(1), update(2), update(3)
    acc = get_strategy(name).begin(make_global(), expected_clients=3)
    staged_add(acc, first, 2, 500)
    staged = acc.stage(layout_of(bad), 4)
    staged.write([("big", 0, bad["big"].reshape(-1)[:20_000])])  # half of one tensor staged
    with pytest.raises(MergeError) as info:
        fail(staged, {k: v.reshape(-1) for k, v in bad.items()})  # type: ignore[operator]
    if what == "nan":
        assert isinstance(info.value, NonFiniteError) and "'b'" in str(info.value)
    assert staged.state == "failed" and acc.num_clients == 1
    with pytest.raises(MergeError, match="failed"):
        staged.commit()
    staged_add(acc, last, 3, 500)  # the next update stages into the same buffers
    result = acc.finish()
    expected = merge(name, make_global(), [(first, 2), (last, 3)])
    assert all(torch.equal(result[k], expected[k]) for k in expected)


@pytest.mark.parametrize("name", ALL)
def test_an_aborted_stage_changes_nothing(name: str) -> None:
    acc = get_strategy(name).begin(make_global(), expected_clients=2)
    staged = acc.stage(layout_of(update(1)), 1)
    staged.write(pieces_of(update(1), 10_000)[0])
    staged.abort()
    staged.abort()  # idempotent
    assert acc.num_clients == 0
    staged_add(acc, update(2), 1, 10_000)
    expected = merge(name, make_global(), [(update(2), 1)])
    result = acc.finish()
    assert all(torch.equal(result[k], expected[k]) for k in expected)


def test_one_update_is_staged_at_a_time() -> None:
    acc = get_strategy("pad").begin(make_global(), expected_clients=3)
    staged = acc.stage(layout_of(update(1)), 1)
    with pytest.raises(MergeError, match="being staged"):
        acc.stage(layout_of(update(2)), 1)
    with pytest.raises(MergeError, match="being staged"):
        acc.add(update(2), 1)
    staged.abort()
    acc.add(update(2), 1)  # free again


@pytest.mark.parametrize(
    ("layout", "n", "message"),
    [
        ({"zzz": ((1,), torch.float32)}, 1, "zzz"),
        ({"w": ((5, 3), torch.float32)}, 1, "'w' has shape"),
        ({"w": ((3, 5), torch.int64)}, 1, "'w' must be floating"),
        ({"n": ((), torch.float32)}, 1, "'n' must be integer"),
        ({"w": ((3, 5), torch.float32)}, 0, "num_examples"),
        ({}, 1, "no tensors"),
    ],
)
def test_a_stage_is_checked_like_an_update(layout: dict[str, tuple[tuple[int, ...], torch.dtype]], n: int, message: str) -> None:
    acc = get_strategy("pad").begin(make_global(), expected_clients=1)
    with pytest.raises(MergeError, match=message):
        acc.stage(layout, n)
    assert acc._staged is None


def test_a_round_that_finishes_while_an_update_is_staged_leaves_it_out() -> None:
    acc = get_strategy("pad").begin(make_global(), expected_clients=2)
    staged_add(acc, update(1), 1, 1000)
    staged = acc.stage(layout_of(update(2)), 1)
    staged.write(pieces_of(update(2), 1000)[0])
    result = acc.finish()
    assert torch.equal(result["w"], merge("pad", make_global(), [(update(1), 1)])["w"])
    with pytest.raises(AccumulatorClosed):
        staged.write(pieces_of(update(2), 1000)[1])
    with pytest.raises(MergeError):
        staged.commit()


@pytest.mark.parametrize("name", BOTH)
def test_staging_memory_is_two_sums_whatever_the_number_of_updates(name: str) -> None:
    acc = get_strategy(name).begin(make_global(), expected_clients=30)
    for i in range(30):
        staged_add(acc, update(i), 1 + i % 3, 4096)
    held = list(acc._sums.values()) + [t for ts in acc._spare.values() for t in ts]  # type: ignore[attr-defined]
    per_key = sum(v.numel() for k, v in make_global().items() if k != "deep")
    assert sum(t.numel() for t in held) == 2 * per_key


class _LastWins(Accumulator):
    """A strategy without its own staging: keeps the last update (for the default path)."""

    def __init__(self, global_state: Mapping[str, Tensor], expected_clients: int) -> None:
        super().__init__(global_state, expected_clients)
        self.last: dict[str, Tensor] = {}

    def _fold(self, tensors: Mapping[str, Tensor], num_examples: int) -> None:
        self.last = {k: v.clone() for k, v in tensors.items()}

    def _result(self) -> dict[str, Tensor]:
        return {k: self.last.get(k, v).clone() for k, v in self._global.items()}


def test_strategies_without_their_own_staging_get_assembled_updates() -> None:
    acc = _LastWins(make_global(), expected_clients=2)
    staged_add(acc, update(1), 1, 333)
    staged = acc.stage(layout_of(update(2)), 1)
    staged.write(pieces_of(update(2), 333)[0])
    staged.abort()
    result = acc.finish()
    assert acc.num_clients == 1
    assert all(torch.equal(result[k], v) for k, v in update(1).items())


@pytest.mark.parametrize("name", BOTH)
def test_the_next_round_reuses_the_staging_buffers_of_the_last(name: str) -> None:
    strategy = get_strategy(name)
    first = strategy.begin(make_global(), expected_clients=3)
    for i in range(3):
        staged_add(first, update(i), 2, 5000)
    spares = {t.data_ptr() for ts in first._spare.values() for t in ts}  # type: ignore[attr-defined]
    merged = first.finish()
    second = strategy.begin(merged, expected_clients=2)
    retired = make_global()
    second.recycle(first, retired)  # type: ignore[attr-defined]
    pooled = {t.data_ptr() for ts in second._spare.values() for t in ts}  # type: ignore[attr-defined]
    assert spares <= pooled, "the last round's staging buffers"
    assert {t.data_ptr() for t in retired.values()} & pooled, "and the retired model"
    for i in range(2):
        staged_add(second, update(10 + i), 1, 5000)
    result = second.finish()
    expected = merge(name, merged, [(update(10), 1), (update(11), 1)])
    assert all(torch.equal(result[k], expected[k]) for k in expected)
    # Nothing of the first round's result is reused: it is the second round's input.
    assert not {t.data_ptr() for t in merged.values()} & pooled
