"""Pad and holder-weighted merges on small hand-computed tensors, streaming and validated;
the common rules of every strategy (the robust merge's own maths: test_robust_merge.py)."""

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
    UnknownStrategy,
    get_strategy,
    is_finite,
    merge,
)

#: The averaging strategies (running sums: memory independent of the clients).
BOTH = ["pad", "holder-weighted"]
#: Every registered strategy: the rules of flextrain.core.merge.base hold for all.
ALL = list(STRATEGIES)


def make_global() -> dict[str, Tensor]:
    """w: sent by both clients; b: only client 1; deep: nobody; n: an int64 BN counter."""
    return {
        "w": torch.tensor([0.0, 0.0]),
        "b": torch.tensor([10.0]),
        "deep": torch.tensor([[1.0, -1.0]]),
        "n": torch.tensor(5, dtype=torch.int64),
    }


def client_1() -> dict[str, Tensor]:
    return {"w": torch.tensor([2.0, 4.0]), "b": torch.tensor([20.0]), "n": torch.tensor(7)}


def client_2() -> dict[str, Tensor]:
    return {"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(6)}


def copy(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in state.items()}


def assert_states_equal(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_registry_names_every_strategy() -> None:
    assert set(STRATEGIES) == {"pad", "holder-weighted", "robust"}
    for name in STRATEGIES:
        assert get_strategy(name).name == name
    with pytest.raises(UnknownStrategy, match="fedprox"):
        get_strategy("fedprox")


def test_pad_fills_missing_tensors_with_the_global_copy_and_averages_uniformly() -> None:
    new = merge("pad", make_global(), [(client_1(), 1), (client_2(), 3)])
    assert_states_equal(
        new,
        {
            "w": torch.tensor([3.0, 6.0]),  # (2 + 4) / 2, (4 + 8) / 2: counts ignored
            "b": torch.tensor([15.0]),  # (20 + pad 10) / 2
            "deep": torch.tensor([[1.0, -1.0]]),  # nobody sent it
            "n": torch.tensor(7),  # max over holders
        },
    )


def test_holder_weighted_averages_over_senders_by_example_count() -> None:
    new = merge("holder-weighted", make_global(), [(client_1(), 1), (client_2(), 3)])
    assert_states_equal(
        new,
        {
            "w": torch.tensor([3.5, 7.0]),  # (1*2 + 3*4) / 4, (1*4 + 3*8) / 4
            "b": torch.tensor([20.0]),  # only client 1 sent it
            "deep": torch.tensor([[1.0, -1.0]]),
            "n": torch.tensor(7),
        },
    )


def test_a_deep_tensor_moves_by_the_share_of_holders_under_pad_only() -> None:
    g = {"deep": torch.tensor([0.0]), "stem": torch.tensor([0.0])}
    strong = ({"deep": torch.tensor([4.0]), "stem": torch.tensor([1.0])}, 10)
    weak = [({"stem": torch.tensor([1.0])}, 10)] * 3
    # one holder among four clients: pad moves it by 1/4 of the holder's update
    assert merge("pad", g, [strong, *weak])["deep"].item() == pytest.approx(1.0)
    assert merge("holder-weighted", g, [strong, *weak])["deep"].item() == pytest.approx(4.0)


def test_a_tensor_every_tier_holds_is_not_weighted_towards_the_weak_tier_by_either_merge() -> None:
    # The weakest tier's whole prefix (stem, first blocks, head) is held by every
    # device: pad takes the uniform mean and holder-weighted the example-weighted one,
    # so in both the weak devices' pull on it is their share of devices (or examples).
    # Holder-weighting changes only the tensors some devices lack (the deep blocks).
    g = {"head": torch.tensor([0.0])}
    weak = [({"head": torch.tensor([10.0])}, 100)] * 2  # 2 weak devices
    deep = [({"head": torch.tensor([0.0])}, 100)] * 8  # 8 deep devices
    assert merge("pad", g, [*weak, *deep])["head"].item() == pytest.approx(2.0)
    assert merge("holder-weighted", g, [*weak, *deep])["head"].item() == pytest.approx(2.0)
    small_weak = [({"head": torch.tensor([10.0])}, 25)] * 2  # fewer examples: less pull
    assert merge("holder-weighted", g, [*small_weak, *deep])["head"].item() == pytest.approx(
        10.0 * 50 / 850
    )


@pytest.mark.parametrize("name", ALL)
def test_single_client_gives_its_tensors_and_global_values_elsewhere(name: str) -> None:
    new = merge(name, make_global(), [(client_1(), 17)])
    expected = make_global() | client_1()
    assert_states_equal(new, expected)


@pytest.mark.parametrize("name", ALL)
def test_zero_clients_return_a_copy_of_the_global_state(name: str) -> None:
    g = make_global()
    new = get_strategy(name).begin(g, expected_clients=3).finish()
    assert_states_equal(new, g)
    for key in g:
        assert new[key].data_ptr() != g[key].data_ptr()


@pytest.mark.parametrize("name", ALL)
def test_merge_never_mutates_the_global_state_or_the_updates(name: str) -> None:
    g, c1, c2 = make_global(), client_1(), client_2()
    g0, c10, c20 = copy(g), copy(c1), copy(c2)
    new = merge(name, g, [(c1, 2), (c2, 5)])
    assert_states_equal(g, g0)
    assert_states_equal(c1, c10)
    assert_states_equal(c2, c20)
    new["deep"].add_(1.0)  # result does not alias the global state either
    assert_states_equal(g, g0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("bad_update", "num_examples", "message"),
    [
        ({"w": torch.tensor([1.0, 1.0]), "zzz": torch.tensor([1.0])}, 1, "zzz"),
        ({"w": torch.tensor([1.0, 1.0, 1.0])}, 1, "'w' has shape"),
        ({"w": torch.tensor([1.0, float("nan")])}, 1, "'w' holds NaN"),
        ({"b": torch.tensor([float("inf")])}, 1, "'b' holds NaN"),
        ({"n": torch.tensor(2.5)}, 1, "'n' must be integer"),
        ({"w": torch.tensor([1, 2])}, 1, "'w' must be floating"),
        ({"w": torch.tensor([1.0, 1.0])}, 0, "num_examples"),
        ({"w": torch.tensor([1.0, 1.0])}, True, "num_examples"),
        ({}, 1, "no tensors"),
    ],
)
def test_rejected_add_names_the_problem_and_leaves_the_accumulator_unchanged(
    name: str, bad_update: dict[str, Tensor], num_examples: int, message: str
) -> None:
    acc = get_strategy(name).begin(make_global(), expected_clients=3)
    acc.add(client_1(), 1)
    with pytest.raises(MergeError, match=message):
        acc.add(bad_update, num_examples)
    assert acc.num_clients == 1
    acc.add(client_2(), 3)
    assert_states_equal(
        acc.finish(), merge(name, make_global(), [(client_1(), 1), (client_2(), 3)])
    )


@pytest.mark.parametrize("name", ALL)
def test_more_updates_than_expected_are_rejected(name: str) -> None:
    acc = get_strategy(name).begin(make_global(), expected_clients=1)
    acc.add(client_1(), 1)
    with pytest.raises(MergeError, match="expects 1"):
        acc.add(client_2(), 1)


@pytest.mark.parametrize("name", ALL)
def test_a_finished_accumulator_accepts_nothing(name: str) -> None:
    acc = get_strategy(name).begin(make_global(), expected_clients=2)
    acc.finish()
    with pytest.raises(AccumulatorClosed):
        acc.add(client_1(), 1)
    with pytest.raises(AccumulatorClosed):
        acc.finish()


def test_pad_with_quorum_averages_over_the_clients_that_pushed() -> None:
    acc = get_strategy("pad").begin(make_global(), expected_clients=5)
    acc.add(client_1(), 1)
    acc.add(client_2(), 1)
    new = acc.finish()  # 3 expected clients never pushed: N = 2
    torch.testing.assert_close(new["w"], torch.tensor([3.0, 6.0]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_merged_tensors_keep_the_global_dtype(name: str, dtype: torch.dtype) -> None:
    g = {"w": torch.tensor([0.0, 0.0], dtype=dtype), "n": torch.tensor(3)}
    new = merge(name, g, [({"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)}, 2)])
    assert new["w"].dtype == dtype
    assert new["n"].dtype == torch.int64
    torch.testing.assert_close(new["w"], torch.tensor([1.0, 2.0], dtype=dtype))


@pytest.mark.parametrize("name", ALL)
def test_integer_buffers_take_the_maximum_over_holders(name: str) -> None:
    g = {"n": torch.tensor(100), "w": torch.zeros(1)}
    new = merge(name, g, [({"n": torch.tensor(3)}, 1), ({"n": torch.tensor(9)}, 1)])
    assert new["n"].item() == 9  # holders' max, even below the global value
    assert merge(name, g, [({"w": torch.ones(1)}, 1)])["n"].item() == 100


@pytest.mark.parametrize("name", ALL)
def test_streaming_equals_the_convenience_merge(name: str) -> None:
    torch.manual_seed(0)
    g = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    updates = [({"a": torch.randn(3, 4), "b": torch.randn(5)}, 4), ({"a": torch.randn(3, 4)}, 9)]
    acc = get_strategy(name).begin(g, expected_clients=2)
    for tensors, n in updates:
        acc.add(tensors, n)
    assert_states_equal(acc.finish(), merge(name, g, updates))


@pytest.mark.parametrize("name", BOTH)
def test_accumulator_memory_does_not_grow_with_clients(name: str) -> None:
    g = {"a": torch.zeros(1000)}
    acc = get_strategy(name).begin(g, expected_clients=50)
    for i in range(50):
        acc.add({"a": torch.full((1000,), float(i))}, 1)
    held = [v for v in vars(acc).values() if isinstance(v, dict)]
    tensors = [t for d in held for t in d.values() if isinstance(t, Tensor)]
    assert sum(t.numel() for t in tensors) <= 2 * 1000
    torch.testing.assert_close(acc.finish()["a"], torch.full((1000,), 24.5))


def test_merge_error_is_a_value_error() -> None:
    assert issubclass(MergeError, ValueError)
    assert issubclass(AccumulatorClosed, MergeError)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_is_finite_is_exact(dtype: torch.dtype) -> None:
    big = torch.finfo(dtype).max
    assert is_finite(torch.full((1000,), big, dtype=dtype)), "a sum past the range is still finite input"
    assert is_finite(torch.zeros(0, dtype=dtype))
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not is_finite(torch.tensor([1.0, bad], dtype=dtype)), bad
    assert not is_finite(torch.tensor([float("inf"), float("-inf")], dtype=dtype))


@pytest.mark.parametrize("name", STRATEGIES)
def test_checked_finite_skips_only_the_value_check(name: str) -> None:
    acc = get_strategy(name).begin(make_global(), expected_clients=2)
    with pytest.raises(NonFiniteError, match="'w' holds NaN"):
        acc.add({"w": torch.tensor([1.0, float("nan")])}, 1)
    with pytest.raises(MergeError, match="shape"):
        acc.add({"w": torch.tensor([1.0])}, 1, checked_finite=True)
    acc.add(client_1(), 1, checked_finite=True)
    assert acc.num_clients == 1


def test_tier_balanced_gives_every_tier_that_holds_a_tensor_an_equal_say() -> None:
    from flextrain.core.merge.tier_balanced import TierBalancedMerge, update_depth

    g = {
        "head.w": torch.tensor([0.0]),
        "blocks.0.w": torch.tensor([0.0]),
        "blocks.2.w": torch.tensor([0.0]),
        "blocks.3.w": torch.tensor([5.0]),
        "blocks.0.n": torch.tensor(0),
    }
    # One weak device (depth 1) and three deep ones (depth 3).
    weak = (
        {
            "head.w": torch.tensor([10.0]),
            "blocks.0.w": torch.tensor([4.0]),
            "blocks.0.n": torch.tensor(3),
        },
        100,
    )
    deep = [
        (
            {
                "head.w": torch.tensor([0.0]),
                "blocks.0.w": torch.tensor([x]),
                "blocks.2.w": torch.tensor([x]),
                "blocks.0.n": torch.tensor(7),
            },
            n,
        )
        for x, n in ((1.0, 100), (1.0, 100), (3.0, 200))
    ]
    assert update_depth(weak[0]) == 1 and update_depth(deep[0][0]) == 3
    assert update_depth(["stem.w", "head.w"]) == 0
    acc = TierBalancedMerge().begin(g, expected_clients=4)
    for tensors, n in [weak, *deep]:
        acc.add(tensors, n)
    new = acc.finish()
    assert new["head.w"].item() == pytest.approx((10.0 + 0.0) / 2)  # tiers weigh equally
    assert merge("pad", g, [weak, *deep])["head.w"].item() == pytest.approx(10.0 / 4)  # devices
    # blocks.0: the weak tier's 4; the deep tier's example-weighted (1 + 1 + 2 * 3) / 4 = 2
    assert new["blocks.0.w"].item() == pytest.approx((4.0 + 2.0) / 2)
    assert new["blocks.2.w"].item() == pytest.approx(2.0)  # only the deep tier holds it
    assert new["blocks.3.w"].item() == 5.0  # nobody sent it
    assert new["blocks.0.n"].item() == 7  # integers: maximum over holders
    assert g["head.w"].item() == 0.0  # the global state is not mutated


def test_tier_balanced_staged_updates_equal_added_ones() -> None:
    from flextrain.core.merge.tier_balanced import TierBalancedMerge

    g = {"head.w": torch.zeros(3), "blocks.1.w": torch.zeros(2)}
    updates = [
        ({"head.w": torch.tensor([1.0, 2.0, 3.0])}, 5),
        ({"head.w": torch.tensor([3.0, 2.0, 1.0]), "blocks.1.w": torch.tensor([4.0, 4.0])}, 7),
    ]
    added = TierBalancedMerge().begin(g, expected_clients=2)
    staged = TierBalancedMerge().begin(g, expected_clients=2)
    for tensors, n in updates:
        added.add(tensors, n)
        up = staged.stage({k: (v.shape, v.dtype) for k, v in tensors.items()}, n)
        up.write([(k, 0, v.reshape(-1)) for k, v in tensors.items()])
        up.commit()
    with pytest.raises(MergeError):  # the round expects two updates
        staged.add({"head.w": torch.zeros(3)}, 1)
    a, b = added.finish(), staged.finish()
    for key in g:
        torch.testing.assert_close(a[key], b[key])
    torch.testing.assert_close(a["head.w"], torch.tensor([2.0, 2.0, 2.0]))
