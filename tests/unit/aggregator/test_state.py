"""The aggregator's round logic without any network."""

from __future__ import annotations

import pytest
import torch

from flextrain.aggregator.errors import Kind, Rejected
from flextrain.aggregator.service import initial_state
from flextrain.aggregator.state import Aggregation
from flextrain.jobplan import plan_job
from flextrain.wire.tensors import decode, encode, float32_view
from tests.integration.procs import tiny_job


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(quorum: float = 1.0, **kwargs: object) -> tuple[Aggregation, Clock]:
    job = tiny_job(tiers=[("shallow", 1, 2), ("deep", 3, 1)], aggregation={"quorum": quorum, "roundTimeoutSeconds": 60})
    plan = plan_job(job, {})
    clock = Clock()
    return Aggregation(plan, initial_state(plan), clock=clock, **kwargs), clock  # type: ignore[arg-type]


def push(agg: Aggregation, client: str, depth: int, delta: float = 0.1) -> bool:
    tensors = {k: v + delta if v.is_floating_point() else v for k, v in agg.prefix_state(depth).items()}
    specs = encode(tensors).specs
    agg.check_header(client, agg.round.number, 10, specs)
    return agg.fold(client, tensors, 10, 1)


def test_round_closes_when_everyone_pushed() -> None:
    agg, _ = make()
    for tier, replica, depth in (("shallow", 0, 1), ("shallow", 1, 1), ("deep", 0, 3)):
        agg.join("tiny", tier, replica, depth)
    assert not push(agg, "shallow-0", 1)
    assert not push(agg, "shallow-1", 1)
    assert not agg.can_close()
    assert push(agg, "deep-0", 3)
    assert agg.close_round() == 1 and agg.round.number == 2 and not agg.round.pushed


def test_deadline_closes_only_with_quorum() -> None:
    agg, clock = make(quorum=0.6)
    for tier, replica, depth in (("shallow", 0, 1), ("shallow", 1, 1), ("deep", 0, 3)):
        agg.join("tiny", tier, replica, depth)
    assert agg.quorum_count == 2
    push(agg, "shallow-0", 1)
    clock.now += 61
    assert not agg.can_close(), "one of three is below quorum"
    push(agg, "deep-0", 3)
    assert agg.can_close()
    agg.close_round()
    with pytest.raises(Rejected) as info:
        agg.check_header("shallow-1", 1, 10, [])
    assert info.value.kind == Kind.PRECONDITION and info.value.reason == "stale_round"


def test_rejected_fold_leaves_everything_unchanged() -> None:
    agg, _ = make()
    agg.join("tiny", "deep", 0, 3)
    before = {k: v.clone() for k, v in agg.global_state.items()}
    bad = {k: v.clone() for k, v in agg.prefix_state(3).items()}
    bad["head.fc.weight"][0, 0] = float("nan")
    with pytest.raises(Rejected, match=r"head\.fc\.weight"):
        agg.fold("deep-0", bad, 10, 1)
    assert not agg.round.pushed and agg.tiers["deep"].bytes_received == 0
    assert all(torch.equal(before[k], agg.global_state[k]) for k in before)


def test_one_pass_value_check_names_the_tensor_and_ignores_integer_bytes() -> None:
    agg, _ = make()
    agg.join("tiny", "deep", 0, 3)
    specs = agg.expected_spec_list(3)
    good = {k: v.clone() for k, v in agg.prefix_state(3).items()}
    counter = next(k for k in good if k.endswith("num_batches_tracked"))
    # An int64 whose low word reads as a float32 NaN: the one-pass check flags the
    # payload, the per-tensor pass clears it.
    good[counter] = torch.tensor(0x7FC00000, dtype=torch.int64)
    encoded = encode(good)
    tensors = decode(specs, encoded.payload)
    flat = float32_view(specs, encoded.payload)
    assert flat is not None and not bool(torch.isfinite(flat).all())
    assert not agg.fold("deep-0", tensors, 10, len(encoded.payload), flat)

    agg.join("tiny", "shallow", 0, 1)
    bad = {k: v.clone() for k, v in agg.prefix_state(1).items()}
    bad["head.fc.bias"][1] = float("inf")
    encoded = encode(bad)
    specs = agg.expected_spec_list(1)
    before = {k: v.clone() for k, v in agg.global_state.items()}
    with pytest.raises(Rejected, match=r"head\.fc\.bias") as info:
        agg.fold("shallow-0", decode(specs, encoded.payload), 10, 1, float32_view(specs, encoded.payload))
    assert info.value.reason == "non_finite" and "shallow-0" not in agg.round.pushed
    assert all(torch.equal(before[k], agg.global_state[k]) for k in before)


def test_specs_in_another_order_are_checked_one_by_one() -> None:
    agg, _ = make()
    agg.join("tiny", "deep", 0, 3)
    specs = list(reversed(agg.expected_spec_list(3)))
    assert agg.check_header("deep-0", 1, 10, specs).depth == 3
    with pytest.raises(Rejected, match="missing"):
        agg.check_header("deep-0", 1, 10, specs[1:])


def test_job_is_done_after_the_last_round() -> None:
    agg, _ = make()
    agg.total_rounds = 1
    for tier, replica, depth in (("shallow", 0, 1), ("shallow", 1, 1), ("deep", 0, 3)):
        agg.join("tiny", tier, replica, depth)
        push(agg, f"{tier}-{replica}", depth)
    agg.close_round()
    assert agg.done
    with pytest.raises(Rejected, match="complete"):
        agg.check_header("deep-0", 2, 10, [])


def test_update_size_limit() -> None:
    agg, _ = make(max_update_bytes=100)
    agg.join("tiny", "deep", 0, 3)
    specs = encode(agg.prefix_state(3)).specs
    with pytest.raises(Rejected) as info:
        agg.check_header("deep-0", 1, 10, specs)
    assert info.value.kind == Kind.EXHAUSTED
