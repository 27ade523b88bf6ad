"""An aggregator configured with the robust merge: updates arrive through the same
staged path as with the averaging merges, and one outlying device cannot move a layer
far."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flextrain.aggregator.rounds import initial_state
from flextrain.aggregator.state import Aggregation
from flextrain.core.merge import RobustMerge
from flextrain.jobplan import plan_job
from flextrain.wire.tensors import encode
from tests.integration.procs import tiny_job

#: Two shallow devices (depth 1) and three deep ones (depth 3) of a ResNet-8.
TIERS = [("shallow", 1, 2), ("deep", 3, 3)]
#: Every device's update moves each floating value by its delta; deep-0 is the outlier.
DELTAS = {"shallow-0": 0.01, "shallow-1": 0.02, "deep-0": 100.0, "deep-1": 0.03, "deep-2": 0.04}
DEPTHS = {"shallow": 1, "deep": 3}


def make(strategy: str, **robust: object) -> Aggregation:
    aggregation: dict[str, object] = {"strategy": strategy, "roundTimeoutSeconds": 60}
    if robust:
        aggregation["robust"] = robust
    plan = plan_job(tiny_job(tiers=TIERS, aggregation=aggregation), {})
    agg = Aggregation(plan, initial_state(plan))
    for client in DELTAS:
        tier, replica = client.split("-")
        agg.join("tiny", tier, int(replica), DEPTHS[tier])
    return agg


def update(agg: Aggregation, client: str) -> dict[str, Tensor]:
    depth = DEPTHS[client.split("-")[0]]
    delta = DELTAS[client]
    return {
        k: v + delta if v.is_floating_point() else v.clone()
        for k, v in agg.prefix_state(depth).items()
    }


def stream(agg: Aggregation, client: str, tensors: dict[str, Tensor], cut: int) -> bool:
    """Receive an update as the service does: header, then chunks of `cut` bytes."""
    encoded = encode(tensors)
    stage = agg.begin_update(client, agg.round.number, 10, encoded.specs)
    try:
        for start in range(0, len(encoded.payload), cut):
            stage.feed(memoryview(encoded.payload)[start : start + cut])
        return stage.commit(len(encoded.payload))
    finally:
        stage.abort()


def push_all(agg: Aggregation) -> dict[str, Tensor]:
    """Every device pushes (the outlier streamed in chunks, after a broken-off try);
    returns the global model before the round."""
    before = {k: v.clone() for k, v in agg.global_state.items()}
    outlier = update(agg, "deep-0")
    encoded = encode(outlier)
    broken = agg.begin_update("deep-0", agg.round.number, 10, encoded.specs)
    broken.feed(memoryview(encoded.payload)[: len(encoded.payload) // 2])
    broken.abort()  # the stream broke off: leaves no trace
    assert "deep-0" not in agg.round.pushed
    for client in DELTAS:
        if client == "deep-0":
            complete = stream(agg, client, outlier, 4096)
        else:
            complete = agg.fold(client, update(agg, client), 10, 1)
    assert complete and agg.can_close()
    agg.close_round()
    return before


def test_the_job_spec_configures_the_aggregations_strategy() -> None:
    agg = make("robust", method="median", clipMultiple=0)
    assert isinstance(agg.strategy, RobustMerge)
    assert (agg.strategy.method, agg.strategy.clip_multiple) == ("median", None)
    assert isinstance(make("robust").strategy, RobustMerge)


def test_one_outlying_device_cannot_move_a_layer_far() -> None:
    agg = make("robust", method="trimmed-mean", trimFraction=0.2, clipMultiple=3)
    before = push_all(agg)
    shared = set(agg.expected_specs(1))
    deep_only = set(agg.expected_specs(3)) - shared
    assert shared and deep_only
    for key, old in before.items():
        new = agg.global_state[key]
        if not old.is_floating_point():
            assert torch.equal(new, old), key
        elif key in shared:
            # 5 holders; deltas 0.01, 0.02, 0.03, 0.04 and 100, clipped to 3 x 0.03:
            # one trimmed from each end leaves 0.02, 0.03, 0.04
            torch.testing.assert_close(new, old + 0.03, rtol=0, atol=1e-5, msg=key)
        else:
            # 3 holders (the deep tier): 100 clipped to 3 x median(0.03, 0.04, 100) = 0.12;
            # floor(0.2 x 3) = 0 trimmed: mean(0.03, 0.04, 0.12)
            torch.testing.assert_close(new, old + 0.19 / 3, rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("strategy", ["pad", "holder-weighted"])
def test_the_same_outlier_drags_an_averaging_merge(strategy: str) -> None:
    agg = make(strategy)
    before = push_all(agg)
    moved = max(
        float((agg.global_state[k] - v).abs().max())
        for k, v in before.items()
        if v.is_floating_point()
    )
    assert moved > 19  # pad: 100 / 5 on shared tensors; holder-weighted: 100 / 3 on deep ones
