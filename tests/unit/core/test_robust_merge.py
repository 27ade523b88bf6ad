"""The robust merge on small hand-computed tensors: per-tensor norm clipping, then a
coordinate-wise trimmed mean or median over each tensor's holders."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor

from flextrain.api.flextrainjob import AggregationSpec
from flextrain.core.merge import (
    RobustMerge,
    RobustMergeConfigError,
    get_strategy,
    merge,
    strategy_for,
)
from flextrain.core.merge.pad import PadMerge
from flextrain.core.merge.robust import RobustAccumulator, trimmed_count

Update = tuple[Mapping[str, Tensor], int]


def robust_merge(
    global_state: Mapping[str, Tensor], updates: list[Update], **options: object
) -> dict[str, Tensor]:
    acc = RobustMerge(**options).begin(global_state, expected_clients=len(updates))  # type: ignore[arg-type]
    for tensors, n in updates:
        acc.add(tensors, n)
    return acc.finish()


def values(*rows: list[float], key: str = "w") -> list[Update]:
    """One update per row, all holding tensor `key`, 10 examples each."""
    return [({key: torch.tensor(row)}, 10) for row in rows]


def assert_states_equal(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


# -- the statistics ------------------------------------------------------------------


def test_trimmed_mean_drops_the_outlier_of_five_holders_coordinate_by_coordinate() -> None:
    g = {"w": torch.tensor([0.0, 0.0])}
    updates = values([1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [100.0, -1000.0])
    new = robust_merge(g, updates, trim_fraction=0.2, clip_multiple=None)
    # floor(0.2 * 5) = 1 from each end of each coordinate:
    # (2 + 3 + 4) / 3 and (10 + 20 + 30) / 3 (the outlier is the top of one, the bottom of the other)
    torch.testing.assert_close(new["w"], torch.tensor([3.0, 20.0]))
    torch.testing.assert_close(merge("pad", g, updates)["w"], torch.tensor([22.0, -180.0]))


def test_trimmed_mean_is_over_deltas_from_the_global_value() -> None:
    g = {"w": torch.tensor([10.0])}
    updates = values([11.0], [12.0], [13.0], [14.0], [-90.0])
    new = robust_merge(g, updates, trim_fraction=0.2, clip_multiple=None)
    torch.testing.assert_close(new["w"], torch.tensor([12.0]))  # 10 + mean(1, 2, 3)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([[1.0, 5.0], [2.0, -7.0], [9.0, 0.0]], [2.0, 0.0]),  # odd: the middle value
        (
            [[1.0, 0.0], [2.0, 8.0], [4.0, 2.0], [100.0, 4.0]],
            [3.0, 3.0],
        ),  # even: mean of the two middle
        ([[1.0], [3.0]], [2.0]),  # two holders: their mean
    ],
    ids=["odd", "even", "two"],
)
def test_median_of_odd_and_even_numbers_of_holders(
    rows: list[list[float]], expected: list[float]
) -> None:
    g = {"w": torch.zeros(len(expected))}
    new = robust_merge(g, values(*rows), method="median", clip_multiple=None)
    torch.testing.assert_close(new["w"], torch.tensor(expected))


def test_no_trimming_is_the_unweighted_mean_over_holders() -> None:
    g = {"w": torch.tensor([0.0])}
    updates = [({"w": torch.tensor([1.0])}, 1), ({"w": torch.tensor([5.0])}, 1000)]
    new = robust_merge(g, updates, trim_fraction=0.0, clip_multiple=None)
    torch.testing.assert_close(new["w"], torch.tensor([3.0]))  # counts do not weigh


@pytest.mark.parametrize(
    ("fraction", "holders", "trimmed"),
    [(0.2, 5, 1), (0.2, 4, 0), (0.2, 10, 2), (0.29, 100, 29), (0.49, 3, 1), (0.0, 7, 0)],
)
def test_trimmed_count_rounds_down(fraction: float, holders: int, trimmed: int) -> None:
    assert trimmed_count(fraction, holders) == trimmed


def test_a_trim_that_leaves_one_value_per_coordinate_is_the_median() -> None:
    g = {"w": torch.tensor([0.0])}
    updates = values([1.0], [2.0], [50.0])
    new = robust_merge(g, updates, trim_fraction=0.49, clip_multiple=None)  # floor(1.47) = 1
    torch.testing.assert_close(new["w"], torch.tensor([2.0]))


# -- clipping --------------------------------------------------------------------------


def test_clipping_scales_an_outlier_delta_to_the_multiple_of_the_median_norm() -> None:
    g = {"w": torch.tensor([1.0, 1.0])}
    # deltas (3, 4), (0, 5), (5, 0), (30, 40): norms 5, 5, 5, 50; median 5, bound 2 x 5 = 10
    updates = values([4.0, 5.0], [1.0, 6.0], [6.0, 1.0], [31.0, 41.0])
    new = robust_merge(g, updates, trim_fraction=0.0, clip_multiple=2.0)
    # the outlier's delta becomes (6, 8); mean of the deltas (14 / 4, 17 / 4)
    torch.testing.assert_close(new["w"], torch.tensor([1.0 + 3.5, 1.0 + 4.25]))
    unclipped = robust_merge(g, updates, trim_fraction=0.0, clip_multiple=None)
    torch.testing.assert_close(unclipped["w"], torch.tensor([1.0 + 9.5, 1.0 + 12.25]))


def test_clipping_is_per_tensor() -> None:
    g = {"a": torch.tensor([0.0]), "b": torch.tensor([0.0])}
    # Client 3 is an outlier in `a` only; `b`'s norms (1, 2, 3) are all under 2 x median.
    updates = [
        ({"a": torch.tensor([1.0]), "b": torch.tensor([1.0])}, 1),
        ({"a": torch.tensor([1.0]), "b": torch.tensor([2.0])}, 1),
        ({"a": torch.tensor([7.0]), "b": torch.tensor([3.0])}, 1),
    ]
    new = robust_merge(g, updates, trim_fraction=0.0, clip_multiple=2.0)
    torch.testing.assert_close(new["a"], torch.tensor([(1.0 + 1.0 + 2.0) / 3]))  # 7 clipped to 2
    torch.testing.assert_close(new["b"], torch.tensor([2.0]))


def test_clipping_with_an_even_number_of_holders_uses_the_mean_of_the_middle_norms() -> None:
    g = {"w": torch.tensor([0.0])}
    # norms 1, 3, 5, 100: median (3 + 5) / 2 = 4, bound 1 x 4: 5 -> 4 and 100 -> 4
    updates = values([1.0], [-3.0], [5.0], [100.0])
    new = robust_merge(g, updates, trim_fraction=0.0, clip_multiple=1.0)
    torch.testing.assert_close(new["w"], torch.tensor([(1.0 - 3.0 + 4.0 + 4.0) / 4]))


def test_the_median_update_is_never_clipped() -> None:
    g = {"w": torch.tensor([0.0, 0.0])}
    updates = values([3.0, 4.0], [0.0, 5.0], [5.0, 0.0])
    new = robust_merge(g, updates, trim_fraction=0.0, clip_multiple=1.0)
    torch.testing.assert_close(new["w"], torch.tensor([8.0 / 3, 3.0]))


# -- who holds what -------------------------------------------------------------------


def make_global() -> dict[str, Tensor]:
    """stem and block1: every client; block2, block3: the deep client; spare: nobody;
    n: an int64 BatchNorm counter."""
    return {
        "stem": torch.tensor([0.0, 0.0]),
        "block1": torch.tensor([1.0]),
        "block2": torch.tensor([2.0, 2.0]),
        "block3": torch.tensor([[3.0]]),
        "spare": torch.tensor([-1.0]),
        "n": torch.tensor(5, dtype=torch.int64),
    }


def shallow(stem: float, block1: float, n: int) -> dict[str, Tensor]:
    """A depth-1 client's update."""
    return {
        "stem": torch.tensor([stem, stem]),
        "block1": torch.tensor([block1]),
        "n": torch.tensor(n),
    }


def deep(stem: float, block1: float, n: int) -> dict[str, Tensor]:
    """A depth-3 client's update."""
    return shallow(stem, block1, n) | {
        "block2": torch.tensor([2.5, 1.25]),
        "block3": torch.tensor([[-7.0]]),
    }


def test_partial_updates_merge_each_tensor_over_its_holders_only() -> None:
    updates = [(shallow(1.0, 2.0, 9), 5), (shallow(3.0, 4.0, 7), 5), (deep(5.0, 90.0, 8), 5)]
    new = robust_merge(make_global(), updates, method="median", clip_multiple=None)
    assert_states_equal(
        new,
        {
            "stem": torch.tensor([3.0, 3.0]),  # median of 1, 3, 5
            "block1": torch.tensor([4.0]),  # median of 2, 4, 90: the outlier is out
            "block2": torch.tensor([2.5, 1.25]),  # only the deep client holds it
            "block3": torch.tensor([[-7.0]]),
            "spare": torch.tensor([-1.0]),  # nobody sent it
            "n": torch.tensor(9),  # integers: the maximum over holders
        },
    )
    # Under pad the deep blocks would move by a third of the deep client's update.
    padded = merge("pad", make_global(), updates)
    torch.testing.assert_close(padded["block3"], torch.tensor([[3.0 - 10.0 / 3]]))


@pytest.mark.parametrize(
    "options",
    [
        {"method": "median"},
        {"method": "trimmed-mean", "trim_fraction": 0.4},
        {"method": "trimmed-mean", "clip_multiple": 1.0},
    ],
)
def test_a_tensor_held_by_one_client_takes_its_value_exactly(options: dict[str, object]) -> None:
    g = {"w": torch.tensor([0.1, 0.2, 0.3]), "other": torch.tensor([0.0])}
    sent = torch.tensor([1.0 / 3, 1e-7, -123.456])
    updates = [({"w": sent, "other": torch.tensor([1.0])}, 1), ({"other": torch.tensor([2.0])}, 1)]
    new = robust_merge(g, updates, **options)
    assert torch.equal(new["w"], sent)  # bitwise: no g + (u - g) rounding


def test_a_tensor_nobody_sent_keeps_the_global_value_in_a_new_tensor() -> None:
    g = make_global()
    new = robust_merge(g, [(shallow(1.0, 2.0, 1), 3)])
    assert torch.equal(new["block2"], g["block2"]) and torch.equal(new["spare"], g["spare"])
    assert new["block2"].data_ptr() != g["block2"].data_ptr()


def test_integer_tensors_take_the_maximum_over_holders() -> None:
    g = {"n": torch.tensor(100), "w": torch.zeros(1)}
    updates = [
        ({"n": torch.tensor(3)}, 1),
        ({"n": torch.tensor(9)}, 1),
        ({"n": torch.tensor(4)}, 1),
    ]
    assert robust_merge(g, updates)["n"].item() == 9  # holders' maximum, below the global value
    assert robust_merge(g, [({"w": torch.ones(1)}, 1)])["n"].item() == 100


def test_zero_updates_give_a_copy_of_the_global_state() -> None:
    g = make_global()
    new = RobustMerge().begin(g, expected_clients=4).finish()
    assert_states_equal(new, g)
    assert all(new[k].data_ptr() != g[k].data_ptr() for k in g)


def test_an_added_update_is_copied_so_its_sender_may_reuse_it() -> None:
    g = {"w": torch.zeros(3)}
    sent = torch.tensor([1.0, 2.0, 3.0])
    acc = RobustMerge(method="median").begin(g, expected_clients=3)
    for _ in range(3):
        acc.add({"w": sent}, 1)
        sent.add_(1.0)  # the client's buffer is reused for the next round's training
    torch.testing.assert_close(acc.finish()["w"], torch.tensor([2.0, 3.0, 4.0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_merged_tensors_keep_the_global_dtype(dtype: torch.dtype) -> None:
    g = {"w": torch.zeros(2, dtype=dtype)}
    new = robust_merge(g, values([1.0, 2.0], [2.0, 4.0], [3.0, 6.0]), clip_multiple=None)
    assert new["w"].dtype == dtype
    torch.testing.assert_close(new["w"], torch.tensor([2.0, 4.0], dtype=dtype))


def test_large_tensors_are_reduced_slice_by_slice_like_small_ones() -> None:
    torch.manual_seed(0)
    g = {"big": torch.randn(200_003)}  # several slices of 65,536 coordinates and a ragged end
    updates = [({"big": g["big"] + torch.randn(200_003)}, 1) for _ in range(5)]
    new = robust_merge(g, updates, clip_multiple=None)
    stacked = torch.stack([u["big"] - g["big"] for u, _ in updates]).sort(dim=0).values
    torch.testing.assert_close(new["big"], g["big"] + stacked[1:4].mean(dim=0))


# -- staging ----------------------------------------------------------------------------


def _stage(acc: RobustAccumulator, tensors: Mapping[str, Tensor], n: int) -> None:
    staged = acc.stage({k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}, n)
    staged.write([(k, 0, v.reshape(-1)) for k, v in tensors.items()])
    staged.commit()


def test_a_rejected_or_aborted_staged_update_leaves_no_trace() -> None:
    good = [(shallow(1.0, 2.0, 9), 5), (deep(5.0, 90.0, 8), 5), (shallow(3.0, 4.0, 7), 5)]
    acc = RobustMerge(method="median").begin(make_global(), expected_clients=3)
    _stage(acc, *good[0])
    aborted = acc.stage({"stem": ((2,), torch.float32)}, 1)
    aborted.write([("stem", 0, torch.tensor([1000.0]))])
    aborted.abort()
    nan = deep(float("nan"), 1.0, 99)
    rejected = acc.stage({k: (tuple(v.shape), v.dtype) for k, v in nan.items()}, 1)
    with pytest.raises(ValueError, match="'stem' holds NaN"):
        rejected.write([(k, 0, v.reshape(-1)) for k, v in nan.items()])
    assert rejected.state == "failed" and acc.num_clients == 1
    assert {k: len(v) for k, v in acc._held.items()} == {"stem": 1, "block1": 1}
    _stage(acc, *good[1])
    _stage(acc, *good[2])
    result = acc.finish()
    assert_states_equal(result, robust_merge(make_global(), good, method="median"))
    assert torch.equal(result["stem"], torch.tensor([3.0, 3.0]))  # the median of 1, 5, 3


def test_a_staged_update_is_kept_without_another_copy() -> None:
    acc = RobustMerge().begin({"w": torch.zeros(4)}, expected_clients=1)
    staged = acc.stage({"w": ((4,), torch.float32)}, 1)
    staged.write([("w", 0, torch.arange(4.0))])
    assembled = staged._tensors["w"].data_ptr()  # type: ignore[attr-defined]
    staged.commit()
    assert acc._held["w"][0].data_ptr() == assembled


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "mode"}, "method must be one of"),
        ({"trim_fraction": 0.5}, r"\[0, 0.5\)"),
        ({"trim_fraction": -0.1}, r"\[0, 0.5\)"),
        ({"method": "median", "trim_fraction": 0.1}, "trimmed mean only"),
        ({"clip_multiple": 0.5}, ">= 1"),
        ({"clip_multiple": float("inf")}, ">= 1"),
    ],
)
def test_options_outside_their_limits_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(RobustMergeConfigError, match=message):
        get_strategy("robust", **options)


def test_defaults_and_no_clipping() -> None:
    default = get_strategy("robust")
    assert isinstance(default, RobustMerge)
    assert (default.method, default.trim_fraction, default.clip_multiple) == (
        "trimmed-mean",
        0.2,
        3.0,
    )
    assert RobustMerge(clip_multiple=0).clip_multiple is None
    assert RobustMerge(clip_multiple=None).clip_multiple is None
    with pytest.raises(TypeError):
        get_strategy("pad", method="median")


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ({"strategy": "robust"}, ("trimmed-mean", 0.2, 3.0)),
        (
            {"strategy": "robust", "robust": {"method": "median", "clipMultiple": 0}},
            ("median", 0.0, None),
        ),
        (
            {"strategy": "robust", "robust": {"trimFraction": 0.1, "clipMultiple": 5}},
            ("trimmed-mean", 0.1, 5.0),
        ),
    ],
)
def test_a_jobs_aggregation_spec_configures_the_strategy(
    aggregation: dict[str, object], expected: tuple[str, float, float | None]
) -> None:
    strategy = strategy_for(AggregationSpec.model_validate(aggregation))
    assert isinstance(strategy, RobustMerge)
    assert (strategy.method, strategy.trim_fraction, strategy.clip_multiple) == expected


def test_other_strategies_come_from_their_name() -> None:
    assert isinstance(strategy_for(AggregationSpec()), PadMerge)
    assert strategy_for(AggregationSpec(strategy="holder-weighted")).name == "holder-weighted"
