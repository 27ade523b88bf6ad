"""Federated FlexTrain and baselines end to end, in process, on a tiny learnable task."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from flextrain.core.baselines import plan_devices, plan_fedclass, plan_fedsmall, plan_flextrain
from flextrain.core.merge import UnknownStrategy
from flextrain.core.models import ModelSpec
from flextrain.core.simulator import RoundRecord, iid_split, simulate

TIERS = [(1, 2), (3, 2)]


def test_flextrain_plan_gives_each_device_its_tier_and_spares_the_weakest_distillation() -> None:
    plans = plan_flextrain([(3, 1), (1, 2), (2, 1)])
    assert [(p.device, p.train_depth, p.distill, p.group) for p in plans] == [
        (0, 3, True, 0),
        (1, 1, False, 0),
        (2, 1, False, 0),
        (3, 2, True, 0),
    ]


def test_fedsmall_plan_trains_every_device_at_the_weakest_depth() -> None:
    plans = plan_fedsmall([(3, 2), (1, 1)])
    assert {(p.train_depth, p.eval_depth, p.distill, p.group) for p in plans} == {(1, 1, False, 0)}
    assert [p.tier_depth for p in plans] == [3, 3, 1]


def test_fedclass_plan_gives_each_tier_its_own_model() -> None:
    plans = plan_fedclass([(3, 2), (1, 1)])
    assert [(p.group, p.train_depth, p.distill) for p in plans] == [
        (0, 3, False),
        (0, 3, False),
        (1, 1, False),
    ]


@pytest.mark.parametrize("tiers", [[], [(1, 2), (1, 3)], [(0, 1)], [(2, 0)]])
def test_invalid_tiers_are_rejected(tiers: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        plan_devices("flextrain", tiers)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="method"):
        plan_devices("fedprox", TIERS)


def test_iid_split_is_a_seeded_disjoint_cover() -> None:
    parts = iid_split(103, 4, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} == {25, 26}
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_split(103, 4, seed=1), strict=True))


def test_flextrain_simulation_learns_above_chance_for_both_tiers(
    spec: ModelSpec, blobs: Any
) -> None:
    train, test = blobs(n_train=320, n_test=200, classes=4)
    records: list[RoundRecord] = []
    result = simulate(
        spec, train, test, TIERS, rounds=4, local_epochs=1, batch_size=32,
        progress=records.append,
    )  # fmt: skip
    assert [r.round for r in records] == [1, 2, 3, 4]
    first, last = result.rounds[0], result.rounds[-1]
    assert set(last.accuracy) == {1, 3}
    assert min(last.accuracy.values()) > 0.6  # chance is 0.25
    assert last.mean_device_accuracy is not None and first.mean_device_accuracy is not None
    assert last.mean_device_accuracy > first.mean_device_accuracy
    assert last.mean_device_accuracy == pytest.approx(np.mean(list(last.accuracy.values())))
    assert result.to_dict()["final_mean_device_accuracy"] == last.mean_device_accuracy


def test_weak_tier_never_receives_or_sends_deep_blocks(spec: ModelSpec, blobs: Any) -> None:
    train, test = blobs(n_train=64, n_test=16)
    result = simulate(
        spec, train, test, TIERS, rounds=1, local_epochs=1, batch_size=32, max_steps_per_epoch=1
    )
    profile = spec.profile()
    record = result.rounds[0]
    for depth, count in TIERS:
        assert record.bytes_down[depth] == count * profile.state_bytes(depth)
        assert record.bytes_up[depth] == count * profile.state_bytes(depth)
    assert result.full_model_bytes == profile.state_bytes()


@pytest.mark.parametrize("strategy", ["pad", "holder-weighted"])
def test_fedsmall_never_moves_blocks_beyond_the_weakest_depth(
    spec: ModelSpec, blobs: Any, strategy: str
) -> None:
    train, test = blobs(n_train=64, n_test=16)
    result = simulate(
        spec, train, test, TIERS, rounds=2, local_epochs=1, batch_size=32,
        method="fedsmall", strategy=strategy, seed=3, max_steps_per_epoch=1,
    )  # fmt: skip
    torch.manual_seed(3)
    initial = spec.build().state_dict()
    (state,) = result.final_states.values()
    for key in initial:
        deep = key.startswith(("blocks.1.", "blocks.2."))
        assert torch.equal(state[key], initial[key]) == deep, key
    assert len(set(result.final_accuracy.values())) == 1  # everyone runs depth 1


def test_fedclass_keeps_one_model_per_tier(spec: ModelSpec, blobs: Any) -> None:
    train, test = blobs(n_train=64, n_test=16)
    result = simulate(
        spec, train, test, TIERS, rounds=1, local_epochs=1, batch_size=32,
        method="fedclass", max_steps_per_epoch=1,
    )  # fmt: skip
    assert sorted(result.final_states) == [0, 1]
    weak, strong = result.final_states[0], result.final_states[1]
    assert not torch.equal(weak["stem.conv.weight"], strong["stem.conv.weight"])
    assert set(result.final_accuracy) == {1, 3}


def test_given_partitions_are_used_and_checked(spec: ModelSpec, blobs: Any) -> None:
    train, test = blobs(n_train=64, n_test=16)
    parts = [np.arange(0, 10), np.arange(10, 20), np.arange(20, 40), np.arange(40, 64)]
    result = simulate(
        spec, train, test, TIERS, rounds=1, local_epochs=1, batch_size=64, partitions=parts,
        strategy="holder-weighted",
    )  # fmt: skip
    assert result.rounds[0].bytes_up[1] > 0
    with pytest.raises(ValueError, match="partitions"):
        simulate(spec, train, test, TIERS, 1, 1, 8, partitions=parts[:3])
    with pytest.raises(ValueError, match="outside"):
        simulate(spec, train, test, TIERS, 1, 1, 8, partitions=[*parts[:3], np.array([64])])


def test_evaluation_runs_every_nth_round_and_after_the_last(spec: ModelSpec, blobs: Any) -> None:
    train, test = blobs(n_train=64, n_test=16)
    result = simulate(
        spec, train, test, TIERS, rounds=3, local_epochs=1, batch_size=32, eval_every=2,
        max_steps_per_epoch=1,
    )  # fmt: skip
    assert [bool(r.accuracy) for r in result.rounds] == [False, True, True]
    assert result.rounds[0].mean_device_accuracy is None


def test_bad_simulation_arguments_are_rejected(spec: ModelSpec, blobs: Any) -> None:
    train, test = blobs(n_train=32, n_test=8)
    with pytest.raises(UnknownStrategy):
        simulate(spec, train, test, TIERS, 1, 1, 8, strategy="median")
    with pytest.raises(ValueError, match="exceeds"):
        simulate(spec, train, test, [(4, 1)], 1, 1, 8)
    with pytest.raises(ValueError, match="rounds"):
        simulate(spec, train, test, TIERS, 0, 1, 8)
    with pytest.raises(ValueError, match="anchor_loss"):
        simulate(spec, train, test, TIERS, 1, 1, 8, anchor_loss="features")
    with pytest.raises(ValueError, match="flextrain"):
        simulate(spec, train, test, TIERS, 1, 1, 8, method="fedsmall", anchor_loss="ce")
    with pytest.raises(ValueError, match="anchor_tiers"):
        simulate(spec, train, test, TIERS, 1, 1, 8, anchor_loss="ce", anchor_tiers="some")


@pytest.mark.parametrize(("anchor_loss", "anchor_tiers"), [("distill", "weakest"), ("ce", "all")])
def test_the_anchor_option_changes_only_the_deeper_devices_training(
    spec: ModelSpec, blobs: Any, anchor_loss: str, anchor_tiers: str
) -> None:
    """With one round and no deep device the option changes nothing; with one it does."""
    train, test = blobs(n_train=64, n_test=16)
    kw: dict[str, Any] = {"rounds": 1, "local_epochs": 1, "batch_size": 32, "seed": 5}
    kw["anchor_tiers"] = anchor_tiers
    weak_only = [(1, 2)]
    a = simulate(spec, train, test, weak_only, **kw).final_states[0]
    b = simulate(spec, train, test, weak_only, anchor_loss=anchor_loss, **kw).final_states[0]
    assert all(torch.equal(a[key], b[key]) for key in a)
    c = simulate(spec, train, test, TIERS, **kw | {"anchor_tiers": "weakest"}).final_states[0]
    d = simulate(spec, train, test, TIERS, anchor_loss=anchor_loss, **kw).final_states[0]
    assert not torch.equal(c["head.fc.weight"], d["head.fc.weight"])


@pytest.mark.parametrize("method", ["flextrain", "fedsmall", "fedclass"])
@pytest.mark.parametrize("strategy", ["pad", "holder-weighted"])
def test_every_method_and_merge_learns_on_three_resnet20_tiers(
    blobs: Any, method: str, strategy: str
) -> None:
    """Broader regression run: every method x merge on ResNet-20 (1-2 s each on 2 cores)."""
    spec = ModelSpec("resnet", 20, 4, 1, 8)
    train, test = blobs(n_train=600, n_test=200, classes=4, noise=1.5)
    result = simulate(
        spec, train, test, [(3, 2), (6, 1), (9, 2)], rounds=4, local_epochs=1, batch_size=32,
        method=method, strategy=strategy,
    )  # fmt: skip
    assert min(result.final_accuracy.values()) > 0.5  # chance is 0.25
    assert sum(result.rounds[-1].bytes_up.values()) > 0
