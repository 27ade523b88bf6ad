"""The service's status view: a reader never sees a closed round before its evaluation
and checkpoint are done (the operator marks a job Succeeded from ``done``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from flextrain.aggregator.flow import SendSlots
from flextrain.aggregator.service import AggregatorService, Settings
from flextrain.jobplan import plan_job
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.wire.tensors import ReceiveBuffer, encode
from tests.integration.procs import tiny_job
from tests.unit.aggregator.test_state import push


def test_status_reports_a_round_only_after_its_evaluation_and_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_job(tiny_job(tiers=[("shallow", 1, 1), ("deep", 3, 1)]), {})
    service = AggregatorService(plan, Settings(checkpoint_dir=tmp_path))
    service.agg.total_rounds = 1
    seen: list[tuple[int, bool, dict[int, tuple[float, int]]]] = []
    evaluate, save = service.evaluator.evaluate, service.rounds.store.save  # type: ignore[union-attr]

    def watched_evaluate(global_state: dict[str, torch.Tensor], closed: int) -> None:
        seen.append((service.rounds.reported_rounds, service.rounds.reported_done, service.evaluator.latest()))
        evaluate(global_state, closed)

    def watched_save(checkpoint: object) -> None:
        seen.append((service.rounds.reported_rounds, service.rounds.reported_done, service.evaluator.latest()))
        save(checkpoint)  # type: ignore[arg-type]

    monkeypatch.setattr(service.evaluator, "evaluate", watched_evaluate)
    monkeypatch.setattr(service.rounds.store, "save", watched_save)
    for tier, depth in (("shallow", 1), ("deep", 3)):
        service.agg.join("tiny", tier, 0, depth)
        push(service.agg, f"{tier}-0", depth)

    assert service.rounds._close() == 1
    assert service.agg.done, "the state machine is done as soon as the round merges"
    # ...but while evaluating and checkpointing, status still shows the previous round.
    assert [s[:2] for s in seen] == [(0, False), (0, False)]
    assert service.rounds.reported_rounds == 1 and service.rounds.reported_done
    assert service.status().round == 1 and service.status().done
    assert {r for _, r in service.evaluator.latest().values()} == {1}


async def test_concurrent_pulls_of_one_depth_share_one_encode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = plan_job(tiny_job(tiers=[("shallow", 1, 3), ("deep", 3, 2)]), {})
    service = AggregatorService(plan)
    calls: list[int] = []

    frame = service.models._frame

    def counting_encode(number: int, model: Any, names: list[str]) -> Any:
        calls.append(len(names))
        time.sleep(0.05)  # long enough for every pull to arrive while it runs
        return frame(number, model, names)

    monkeypatch.setattr(service.models, "_frame", counting_encode)
    await service.start()
    try:
        clients = [
            service.join("tiny", tier, r, d).client_id
            for tier, d, n in (("shallow", 1, 3), ("deep", 3, 2))
            for r in range(n)
        ]
        results = await asyncio.gather(*(service.pull(c, 1, 0) for c in clients))
    finally:
        await service.stop()
    assert all(r.ready and r.round == 1 for r in results)
    assert sorted(calls) == sorted({len(service.agg.prefix_state(d)) for d in (1, 3)}), (
        "one encode per depth"
    )
    shallow = {id(r.encoded) for r in results[:3]}
    assert len(shallow) == 1 and results[3].encoded is results[4].encoded


async def test_the_serialized_model_is_dropped_once_every_client_of_its_depth_has_it() -> None:
    plan = plan_job(tiny_job(tiers=[("shallow", 1, 2), ("deep", 3, 1)]), {})
    service = AggregatorService(plan)
    await service.start()
    try:
        ids = [
            service.join("tiny", t, r, d).client_id
            for t, d, r in (("shallow", 1, 0), ("shallow", 1, 1), ("deep", 3, 0))
        ]
        await service.pull(ids[0], 1, 0)
        assert set(service.models._encoded) == {(1, 1)}, "one shallow client still has to pull"
        again = await service.pull(ids[0], 1, 0)  # a retry of the same client changes nothing
        assert set(service.models._encoded) == {(1, 1)} and again.ready
        await service.pull(ids[1], 1, 0)
        await service.pull(ids[2], 1, 0)
        assert service.models._encoded == {}
    finally:
        await service.stop()


def _address(view: memoryview) -> int:
    return torch.frombuffer(view, dtype=torch.uint8).data_ptr() if len(view) else 0


def test_a_receive_buffer_is_reused_and_grows_to_the_largest_update() -> None:
    buffer = ReceiveBuffer()
    first = buffer.take(1000)
    assert len(first) == 1000 and not first.readonly
    first[:] = b"\x01" * 1000
    del first
    smaller = buffer.take(10)
    assert len(smaller) == 10 and bytes(smaller) == b"\x01" * 10, "the same memory, not a new buffer"
    address = _address(smaller)
    del smaller
    assert _address(buffer.take(1000)) == address
    larger = buffer.take(5000)
    assert len(larger) == 5000


async def _push(service: AggregatorService, client: str, update: dict[str, torch.Tensor], cut: int = 4096) -> int:
    """A push as the servicer makes it: header, then the payload in chunks of `cut`."""
    encoded = encode(update)
    ticket = service.begin_push(client, service.agg.round.number, 5, encoded.specs)
    async with service.receive_push(ticket) as push:
        for start in range(0, len(encoded.payload), cut):
            await push.feed(memoryview(encoded.payload)[start : start + cut])
        return await push.finish()


def _shifted(service: AggregatorService, depth: int, shift: float) -> dict[str, torch.Tensor]:
    return {k: v + shift if v.is_floating_point() else v for k, v in service.agg.prefix_state(depth).items()}


@contextlib.asynccontextmanager
async def _deep_clients(replicas: int) -> AsyncIterator[tuple[AggregatorService, list[str]]]:
    """A started service of one depth-3 tier of `replicas` clients, all joined."""
    service = AggregatorService(plan_job(tiny_job(tiers=[("deep", 3, replicas)]), {}))
    await service.start()
    try:
        yield service, [service.join("tiny", "deep", r, 3).client_id for r in range(replicas)]
    finally:
        await service.stop()


def _assert_mean_of(merged: dict[str, torch.Tensor], a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key, value in a.items():
        if value.is_floating_point():
            assert torch.allclose(merged[key], (value + b[key]) / 2), key


async def test_pushes_are_folded_as_they_arrive_and_merge_correctly() -> None:
    plan = plan_job(tiny_job(tiers=[("shallow", 1, 1), ("deep", 3, 1)]), {})
    service = AggregatorService(plan)
    await service.start()
    try:
        expected = {}
        for tier, depth, shift in (("deep", 3, 1.0), ("shallow", 1, 3.0)):
            client = service.join("tiny", tier, 0, depth).client_id
            expected[depth] = _shifted(service, depth, shift)
            assert await _push(service, client, expected[depth], cut=1000) == 1
        assert service.agg.completed_rounds == 1 and service.rounds.accepted == 2
        merged = service.agg.global_state
        # pad over two clients: the stem (sent by both) is the mean of their values.
        stem = next(k for k in expected[1] if k.startswith("stem") and merged[k].is_floating_point())
        assert torch.allclose(merged[stem], (expected[1][stem] + expected[3][stem]) / 2)
    finally:
        await service.stop()


async def test_pushes_are_received_one_at_a_time() -> None:
    async with _deep_clients(2) as (service, ids):
        updates = [_shifted(service, 3, shift) for shift in (1.0, 3.0)]
        first = encode(updates[0])
        ticket = service.begin_push(ids[0], 1, 5, first.specs)
        async with service.receive_push(ticket) as push:
            await push.feed(first.payload[:100])
            second = asyncio.ensure_future(_push(service, ids[1], updates[1]))
            await asyncio.sleep(0.2)
            assert not second.done(), "the second push waits for the first to be received"
            await push.feed(first.payload[100:])
            assert await push.finish() == 1
        assert await second == 1
        merged = service.agg.global_state
        _assert_mean_of(merged, updates[0], updates[1])


async def test_every_depth_gets_exactly_its_prefix_from_the_shared_views() -> None:
    plan = plan_job(tiny_job(tiers=[("shallow", 1, 1), ("middle", 2, 1), ("deep", 3, 1)]), {})
    service = AggregatorService(plan)
    await service.start()
    try:
        ids = {d: service.join("tiny", t, 0, d).client_id for t, d in (("shallow", 1), ("middle", 2), ("deep", 3))}
        for depth, client in ids.items():
            pulled = await service.pull(client, 1, 0)
            assert pulled.encoded is not None
            assert b"".join(pb.ModelChunk.FromString(f).data for f in pulled.encoded.frames) == encode(
                service.agg.prefix_state(depth)
            ).payload
            assert [s.name for s in pulled.encoded.specs] == list(service.agg.expected_specs(depth))
    finally:
        await service.stop()


async def test_a_push_cut_off_midway_leaves_no_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client of a push goes away after part of its update was folded into the
    # staging sums: the next push stages into the same buffers and the round's merge
    # holds exactly the updates that completed.
    async with _deep_clients(3) as (service, ids):
        updates = [_shifted(service, 3, shift) for shift in (1.0, 100.0, 3.0)]
        encoded = encode(updates[1])
        ticket = service.begin_push(ids[1], 1, 5, encoded.specs)
        gone = asyncio.Event()

        async def cut_off() -> None:
            async with service.receive_push(ticket) as push:
                await push.feed(encoded.payload[: len(encoded.payload) // 2])
                gone.set()
                await asyncio.sleep(30)  # the client is gone: cancelled here

        task = asyncio.ensure_future(cut_off())
        await gone.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _push(service, ids[0], updates[0]) == 1
        assert await _push(service, ids[1], updates[2]) == 1, "the cut-off client may push again"
        # Two of three pushed: close the round by hand as its deadline would.
        monkeypatch.setattr(service.agg, "can_close", lambda now=None: True)
        await service.rounds.close()
        merged = service.agg.global_state
        _assert_mean_of(merged, updates[0], updates[2])  # the mean of the two completed updates
        assert service.rounds.accepted == 2


async def test_a_push_whose_client_goes_away_while_it_commits_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    async with _deep_clients(2) as (service, ids):
        updates = [_shifted(service, 3, shift) for shift in (1.0, 3.0)]
        committing = threading.Event()
        begin = service.agg.begin_update

        def slow_begin(*args: Any) -> Any:
            stage = begin(*args)
            commit = stage.commit

            def slow_commit(nbytes: int) -> bool:
                committing.set()
                time.sleep(0.3)
                return commit(nbytes)

            stage.commit = slow_commit  # type: ignore[method-assign]
            return stage

        monkeypatch.setattr(service.agg, "begin_update", slow_begin)
        first = asyncio.ensure_future(_push(service, ids[0], updates[0]))
        while not committing.is_set():
            await asyncio.sleep(0.01)
        first.cancel()
        second = asyncio.ensure_future(_push(service, ids[1], updates[1]))
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second == 1
        assert service.agg.completed_rounds == 1
        merged = service.agg.global_state
        _assert_mean_of(merged, updates[0], updates[1])  # the mean of both updates
        assert service.rounds.accepted == 2, "the cancelled push's update is counted as accepted"


async def test_a_pull_whose_round_closes_before_its_model_is_serialized_gets_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A closed round's model becomes the next round's merge scratch memory, so it must
    # not be serialized once the round has closed.
    async with _deep_clients(2) as (service, (a, b)):
        frame = service.models._frame
        first_model = service.agg.global_state

        def close_first(number: int, model: Any, names: list[str]) -> Any:
            if number == 1:  # the round closes between the pull's request and its encode
                encoded = encode(_shifted(service, 3, 2.0))
                stage = service.agg.begin_update(b, 1, 5, encoded.specs)
                stage.feed(encoded.payload)
                assert stage.commit(len(encoded.payload))
                service.rounds._close()
            return frame(number, model, names)

        assert await _push(service, a, _shifted(service, 3, 1.0)) == 1
        monkeypatch.setattr(service.models, "_frame", close_first)
        pulled = await service.pull(a, 1, 0)
        assert service.agg.completed_rounds == 1
        assert pulled.ready and pulled.round == 2 and pulled.encoded is not None
        assert b"".join(pb.ModelChunk.FromString(f).data for f in pulled.encoded.frames) == encode(
            service.agg.prefix_state(3)
        ).payload, "the current round's model, intact"
        spares = {t.data_ptr() for ts in service.agg._acc._spare.values() for t in ts}  # type: ignore[attr-defined]
        assert {t.data_ptr() for t in first_model.values() if t.numel()} & spares, "round 1's model is scratch now"


async def test_a_push_that_goes_away_while_its_turn_begins_frees_the_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    async with _deep_clients(2) as (service, ids):
        begin, beginning = service.agg.begin_update, threading.Event()

        def slow_begin(*args: Any) -> Any:
            beginning.set()
            time.sleep(0.2)  # the client goes away meanwhile
            return begin(*args)

        monkeypatch.setattr(service.agg, "begin_update", slow_begin)
        encoded = encode(_shifted(service, 3, 1.0))
        ticket = service.begin_push(ids[0], 1, 5, encoded.specs)

        async def gone() -> None:
            async with service.receive_push(ticket):
                raise AssertionError("cancelled before its turn began")

        task = asyncio.ensure_future(gone())
        while not beginning.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.setattr(service.agg, "begin_update", begin)
        # The stage begun for the vanished push was dropped: the next push is taken.
        assert await _push(service, ids[1], _shifted(service, 3, 3.0)) == 1
        assert service.agg.round.pushed == {ids[1]}


async def test_send_slots_bound_the_chunks_in_flight_and_let_every_pull_progress() -> None:
    slots = SendSlots(3, lease_seconds=30)
    inside, most = 0, 0
    sent: dict[int, int] = {}

    async def pull(n: int) -> None:
        nonlocal inside, most
        for _ in range(5):
            async with slots.slot():
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.001)  # gRPC sending the chunk
                inside -= 1
                sent[n] = sent.get(n, 0) + 1

    await asyncio.gather(*(pull(n) for n in range(10)))
    assert most == 3 and sent == {n: 5 for n in range(10)} and slots.expired == 0
    with pytest.raises(ValueError, match="slots must be at least 1, got 0"):
        SendSlots(0, 1.0)


async def test_free_slots_go_to_the_pull_that_began_first() -> None:
    """Pulls are served in the order they began, whatever order their chunks queue in;
    a waiter that gave up is skipped, and nothing is handed out twice."""
    slots = SendSlots(1, lease_seconds=30)
    orders = [slots.next_order() for _ in range(4)]
    assert orders == sorted(orders) and len(set(orders)) == 4
    served: list[int] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with slots.slot(orders[0]):
            await release.wait()

    async def chunk(order: int) -> None:
        async with slots.slot(order):
            served.append(order)
            await asyncio.sleep(0)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    # Queued youngest first; the one of orders[2] gives up before its turn.
    late, gone, early = (asyncio.create_task(chunk(o)) for o in (orders[3], orders[2], orders[1]))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await asyncio.gather(first, late, early)
    assert served == [orders[1], orders[3]]
    assert slots.free == 1 and slots.expired == 0


async def test_a_chunk_that_holds_its_slot_past_the_lease_loses_it() -> None:
    """A client that stopped reading keeps its chunk unsent: after the lease the slot
    goes to the next chunk, and giving it back late frees nothing twice."""
    slots = SendSlots(1, lease_seconds=0.05)
    stalled = asyncio.Event()
    release = asyncio.Event()

    async def stuck() -> None:
        async with slots.slot():
            stalled.set()
            await release.wait()

    stuck_task = asyncio.create_task(stuck())
    await stalled.wait()
    started = time.monotonic()
    async with slots.slot():  # waits for the lease, not for the stalled client
        waited = time.monotonic() - started
    assert 0.03 < waited < 5 and slots.expired == 1
    assert slots.free == 1  # the stalled chunk holds none any more
    release.set()
    await stuck_task
    assert slots.free == 1  # its late exit gave nothing back twice
    async with slots.slot():
        assert slots.free == 0


# -- push timeouts and the refusal log ---------------------------------------------------


def test_push_timeouts_allow_the_idle_time_or_what_the_minimum_rate_leaves() -> None:
    from flextrain.aggregator.flow import PushTimeouts

    t = PushTimeouts(idle_seconds=10, grace_seconds=5, min_bytes_per_second=1000)
    assert t.next_wait(0, 0) == 5  # grace first
    assert t.next_wait(0, 100_000) == 10  # far ahead of the rate: the idle timeout
    assert t.next_wait(7, 3000) == 1  # 5 + 3 - 7
    assert t.next_wait(9, 3000) < 0  # fallen behind
    assert t.longest_seconds(20_000) == 25
    with pytest.raises(ValueError, match="idle_seconds"):
        PushTimeouts(idle_seconds=0)


async def test_a_push_that_stops_sending_is_refused_and_frees_the_line() -> None:
    from flextrain.aggregator.errors import Rejected
    from flextrain.aggregator.flow import PushTimeouts

    job = tiny_job(tiers=[("shallow", 1, 2)])
    service = AggregatorService(plan_job(job, {}), Settings(push_timeouts=PushTimeouts(0.2, 5.0, 1 << 20)))
    await service.start()
    try:
        for replica in (0, 1):
            service.join("tiny", "shallow", replica, 1)
        tensors = service.agg.prefix_state(1)
        encoded = encode(tensors)

        async def stalls() -> AsyncIterator[bytes]:
            yield encoded.payload[:64]
            await asyncio.sleep(30)
            yield b""  # never reached

        ticket = service.begin_push("shallow-0", 1, 10, encoded.specs)
        started = time.monotonic()
        with pytest.raises(Rejected, match="idle timeout") as info:
            async with service.receive_push(ticket) as push:
                async for chunk in push.paced(stalls()):
                    await push.feed(chunk)
        assert info.value.reason == "push_timeout" and time.monotonic() - started < 1.0
        assert service.rounds.rejections == {"push_timeout": 1} and not service.agg.round.pushed

        async def whole() -> AsyncIterator[bytes]:
            yield encoded.payload

        ticket = service.begin_push("shallow-1", 1, 10, encoded.specs)
        async with service.receive_push(ticket) as push:
            async for chunk in push.paced(whole()):
                await push.feed(chunk)
            assert await push.finish() == 1
    finally:
        await service.stop()


def test_refusals_are_logged_at_most_a_burst_per_reason_and_window(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from flextrain.aggregator.errors import RefusalLog, Rejected
    from flextrain.contract.refusals import Reason

    now = [0.0]
    logger = logging.getLogger("test.refusals")
    limited = RefusalLog(logger, burst=2, window=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        logged = [limited(Rejected(Reason.MALFORMED, f"garbage {i}")) for i in range(5)]
        assert logged == [True, True, False, False, False]
        assert limited(Rejected(Reason.UNAUTHENTICATED, "other reason"))  # its own budget
        now[0] = 11.0
        assert limited(Rejected(Reason.MALFORMED, "later"))
    assert "garbage 2" not in caplog.text
    assert "later (3 more refused for this reason and not logged)" in caplog.text
