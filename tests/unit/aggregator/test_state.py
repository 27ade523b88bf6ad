"""The aggregator's round logic without any network."""

from __future__ import annotations

import pytest
import torch

from flextrain.aggregator.errors import Rejected
from flextrain.aggregator.rounds import initial_state
from flextrain.aggregator.state import Aggregation
from flextrain.jobplan import plan_job
from flextrain.wire.tensors import PayloadPieces, encode
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
    assert info.value.reason.status == "FAILED_PRECONDITION" and info.value.reason == "stale_round"


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


def _stream(agg: Aggregation, client: str, tensors: dict[str, torch.Tensor], cut: int, examples: int = 10) -> bool:
    """Receive an update as the service does: header, then chunks of `cut` bytes."""
    encoded = encode(tensors)
    stage = agg.begin_update(client, agg.round.number, examples, encoded.specs)
    try:
        for start in range(0, len(encoded.payload), cut):
            stage.feed(memoryview(encoded.payload)[start : start + cut])
        return stage.commit(len(encoded.payload))
    finally:
        stage.abort()


def test_one_pass_value_check_names_the_tensor_and_ignores_integer_bytes() -> None:
    agg, _ = make()
    agg.max_examples = 1 << 30  # so that a counter of 0x7FC00000 is in range
    agg.join("tiny", "deep", 0, 3)
    good = {k: v.clone() for k, v in agg.prefix_state(3).items()}
    counter = next(k for k in good if k.endswith("num_batches_tracked"))
    # An int64 whose low word reads as a float32 NaN: the one-pass check of its chunk
    # flags it, the per-piece pass clears it.
    good[counter] = torch.tensor(0x7FC00000, dtype=torch.int64)
    encoded = encode(good)
    fed = PayloadPieces(encoded.specs).feed(encoded.payload)
    assert fed.float32 is not None and not bool(torch.isfinite(fed.float32).all())
    assert not _stream(agg, "deep-0", good, len(encoded.payload), examples=1 << 30)
    assert "deep-0" in agg.round.pushed

    agg.join("tiny", "shallow", 0, 1)
    bad = {k: v.clone() for k, v in agg.prefix_state(1).items()}
    bad["head.fc.bias"][1] = float("inf")
    before = {k: v.clone() for k, v in agg.global_state.items()}
    with pytest.raises(Rejected, match=r"head\.fc\.bias") as info:
        _stream(agg, "shallow-0", bad, 4096)
    assert info.value.reason == "non_finite" and "shallow-0" not in agg.round.pushed
    assert all(torch.equal(before[k], agg.global_state[k]) for k in before)


@pytest.mark.parametrize("cut", [37, 1000, 1 << 20])
def test_a_streamed_update_folds_like_a_whole_one(cut: int) -> None:
    streamed, _ = make()
    whole, _ = make()
    for agg in (streamed, whole):
        for tier, replica, depth in (("shallow", 0, 1), ("deep", 0, 3)):
            agg.join("tiny", tier, replica, depth)
    for client, depth, delta in (("shallow-0", 1, 0.5), ("deep-0", 3, -0.25)):
        tensors = {k: v + delta if v.is_floating_point() else v + 1 for k, v in whole.prefix_state(depth).items()}
        _stream(streamed, client, tensors, cut)
        whole.fold(client, tensors, 10, 1)
    streamed.close_round()
    whole.close_round()
    assert all(torch.equal(streamed.global_state[k], v) for k, v in whole.global_state.items())


def test_an_update_cut_short_or_overlong_is_rejected_and_changes_nothing() -> None:
    agg, _ = make()
    agg.join("tiny", "deep", 0, 3)
    tensors = {k: v + 1 if v.is_floating_point() else v for k, v in agg.prefix_state(3).items()}
    encoded = encode(tensors)
    stage = agg.begin_update("deep-0", 1, 10, encoded.specs)
    stage.feed(encoded.payload[:-4])
    with pytest.raises(Rejected) as info:
        stage.commit(len(encoded.payload))
    assert info.value.reason == "truncated" and "incomplete" in str(info.value)
    stage = agg.begin_update("deep-0", 1, 10, encoded.specs)  # the slot is free again
    with pytest.raises(Rejected) as info:
        stage.feed(encoded.payload + b"\0\0\0\0")
    assert info.value.reason == "too_large"
    assert not agg.round.pushed
    assert _stream(agg, "deep-0", tensors, 999) is False  # 1 of 3 clients: not complete yet
    assert agg.round.pushed == {"deep-0"}


def test_an_update_whose_round_closed_while_it_arrived_is_stale() -> None:
    agg, clock = make(quorum=0.3)
    for tier, replica, depth in (("shallow", 0, 1), ("deep", 0, 3)):
        agg.join("tiny", tier, replica, depth)
    push(agg, "shallow-0", 1)
    tensors = {k: v + 1 if v.is_floating_point() else v for k, v in agg.prefix_state(3).items()}
    encoded = encode(tensors)
    stage = agg.begin_update("deep-0", 1, 10, encoded.specs)
    stage.feed(encoded.payload[:100])
    clock.now += 61
    agg.close_round()  # the deadline passed with quorum
    before = {k: v.clone() for k, v in agg.global_state.items()}
    with pytest.raises(Rejected) as info:
        stage.feed(encoded.payload[100:])
    assert info.value.reason == "stale_round"
    with pytest.raises(Rejected) as info:
        stage.commit(len(encoded.payload))
    assert info.value.reason == "stale_round"
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
    assert info.value.reason.status == "RESOURCE_EXHAUSTED"


def test_an_update_counts_at_most_its_senders_shard() -> None:
    agg, _ = make()
    agg.join("tiny", "shallow", 1, 1)
    agg.shard_sizes = [200, 180, 150]  # shards: shallow-0, shallow-1, deep-0
    tensors = {k: v + 0.1 if v.is_floating_point() else v for k, v in agg.prefix_state(1).items()}
    before = {k: v.clone() for k, v in agg.global_state.items()}
    for count in (181, 2**62):
        with pytest.raises(Rejected, match=f"num_examples {count} is more than the 180 examples") as info:
            agg.fold("shallow-1", tensors, count, 1)
        assert info.value.reason == "bad_examples" and info.value.reason.status == "INVALID_ARGUMENT"
    assert not agg.round.pushed and all(torch.equal(before[k], agg.global_state[k]) for k in before)
    assert not agg.fold("shallow-1", tensors, 180, 1)  # its whole shard: accepted


def test_without_shard_sizes_the_configured_maximum_bounds_counts() -> None:
    agg, _ = make()
    agg.join("tiny", "deep", 0, 3)
    agg.max_examples = 1000
    with pytest.raises(Rejected, match="more than the 1000 examples"):
        agg.check_header("deep-0", 1, 1001, [])


def test_shard_sizes_are_the_trainers_shards() -> None:
    from flextrain.aggregator.shards import shard_sizes
    from flextrain.data import load_dataset, shard_for

    job = tiny_job(tiers=[("shallow", 1, 2), ("deep", 3, 1)], dataset={"partition": {"scheme": "dirichlet", "alpha": 0.5}})
    plan = plan_job(job, {})
    sizes = shard_sizes(plan, None)
    ds = job.spec.dataset
    splits = load_dataset(ds.name, None, seed=ds.seed, limit=ds.limit)
    assert sizes == [len(shard_for(splits.train_labels, "dirichlet", 0.5, ds.seed, 3, i)) for i in range(3)]
    assert sum(sizes) == len(splits.train_labels)


def test_a_refusal_never_carries_a_huge_client_string_in_full() -> None:
    agg, _ = make()
    huge = "x" * (1 << 20)
    for call in (lambda: agg.join("tiny", huge, 0, 1), lambda: agg.join(huge, "deep", 0, 3), lambda: agg.client(huge)):
        with pytest.raises(Rejected) as info:
            call()
        message = str(info.value)
        assert len(message) < 600 and "characters cut" in message, message[:200]
    with pytest.raises(Rejected, match=r"tiers: \['shallow', 'deep'\]$"):  # the tail survives
        agg.join("tiny", huge, 0, 1)
    with pytest.raises(Rejected, match=r"^job tiny has no tier 'nope'; tiers: \['shallow', 'deep'\]$"):
        agg.join("tiny", "nope", 0, 1)  # a short message is untouched


# -- value bounds (spec.aggregation.valueBound) ------------------------------------------


def test_a_finite_but_huge_value_is_refused_and_changes_nothing() -> None:
    agg, _ = make()
    agg.join("tiny", "shallow", 0, 1)
    before = {k: v.clone() for k, v in agg.global_state.items()}
    poisoned = {k: v.clone() for k, v in agg.prefix_state(1).items()}
    poisoned["head.fc.bias"][0] = 3e38  # finite: passed the old non-finite check
    for cut in (4096, 1 << 20):
        with pytest.raises(Rejected, match=r"head\.fc\.bias.*magnitude 3e\+38") as info:
            _stream(agg, "shallow-0", poisoned, cut)
        assert info.value.reason == "out_of_bounds" and "shallow-0" not in agg.round.pushed
    assert all(torch.equal(before[k], agg.global_state[k]) for k in before)
    # The bound is relative to the global tensor: 1000 x max(1, its largest magnitude).
    limit = agg.bounds.limit("head.fc.bias")
    assert limit == 1000 * max(1.0, float(agg.global_state["head.fc.bias"].abs().max()))
    fine = {k: v.clone() for k, v in agg.prefix_state(1).items()}
    fine["head.fc.bias"][0] = limit * 0.99
    assert not _stream(agg, "shallow-0", fine, 4096)


@pytest.mark.parametrize("value", [2**63 - 1, -1, 31])
def test_an_integer_counter_out_of_range_is_refused(value: int) -> None:
    agg, _ = make()
    agg.join("tiny", "deep", 0, 3)
    tensors = {k: v.clone() for k, v in agg.prefix_state(3).items()}
    counter = next(k for k in tensors if k.endswith("num_batches_tracked"))
    tensors[counter] = torch.tensor(value, dtype=torch.int64)
    # 10 examples x 3 local epochs: at most 30 steps past the global count of 0.
    with pytest.raises(Rejected, match="may send 0 to 30") as info:
        _stream(agg, "deep-0", tensors, 1 << 20)
    assert info.value.reason == "out_of_bounds"
    tensors[counter] = torch.tensor(30, dtype=torch.int64)
    assert not _stream(agg, "deep-0", tensors, 1 << 20)


def test_a_merge_that_is_not_finite_keeps_the_model_and_names_the_updates() -> None:
    agg, _ = make()
    # A global tensor already this large lets each update reach 3e38 within the bound;
    # two of them overflow float32 in the merge's sum.
    agg.global_state["head.fc.bias"].fill_(3.1e35)
    agg.global_state = dict(agg.global_state)
    agg._acc = agg.strategy.begin(agg.global_state, agg.expected_clients)
    before = {k: v.clone() for k, v in agg.global_state.items()}
    for client, tier, depth, value in (("shallow-0", "shallow", 1, 3.0e38), ("shallow-1", "shallow", 1, 3.0e38), ("deep-0", "deep", 3, 1.0)):
        agg.join("tiny", tier, int(client[-1]), depth)
        tensors = {k: v.clone() for k, v in agg.prefix_state(depth).items()}
        tensors["head.fc.bias"].fill_(value)
        _stream(agg, client, tensors, 1 << 20)
    assert agg.close_round() == 1
    assert all(torch.equal(before[k], agg.global_state[k]) for k in before), "the previous model is kept"
    assert [(r, c) for r, c, _ in agg.discarded] == [(1, "shallow-0"), (1, "shallow-1")]
    assert agg.round.number == 2 and agg.completed_rounds == 1
