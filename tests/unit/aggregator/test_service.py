"""The service's status view: a reader never sees a closed round before its evaluation
and checkpoint are done (the operator marks a job Succeeded from ``done``)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

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
    evaluate, save = service._evaluate, service.store.save  # type: ignore[union-attr]

    def watched_evaluate(closed: int) -> None:
        seen.append((service.reported_rounds, service.reported_done, service.latest_accuracy()))
        evaluate(closed)

    def watched_save(checkpoint: object) -> None:
        seen.append((service.reported_rounds, service.reported_done, service.latest_accuracy()))
        save(checkpoint)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "_evaluate", watched_evaluate)
    monkeypatch.setattr(service.store, "save", watched_save)
    for tier, depth in (("shallow", 1), ("deep", 3)):
        service.agg.join("tiny", tier, 0, depth)
        push(service.agg, f"{tier}-0", depth)

    assert service._close_round_sync() == 1
    assert service.agg.done, "the state machine is done as soon as the round merges"
    # ...but while evaluating and checkpointing, status still shows the previous round.
    assert [s[:2] for s in seen] == [(0, False), (0, False)]
    assert service.reported_rounds == 1 and service.reported_done
    assert {r for _, r in service.latest_accuracy().values()} == {1}


async def test_concurrent_pulls_of_one_depth_share_one_encode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = plan_job(tiny_job(tiers=[("shallow", 1, 3), ("deep", 3, 2)]), {})
    service = AggregatorService(plan)
    calls: list[int] = []

    frame = service._frame

    def counting_encode(model: Any, names: list[str]) -> Any:
        calls.append(len(names))
        time.sleep(0.05)  # long enough for every pull to arrive while it runs
        return frame(model, names)

    monkeypatch.setattr(service, "_frame", counting_encode)
    await service.start()
    try:
        clients = [
            service.join("tiny", tier, r, d).client.client_id
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
            service.join("tiny", t, r, d).client.client_id
            for t, d, r in (("shallow", 1, 0), ("shallow", 1, 1), ("deep", 3, 0))
        ]
        await service.pull(ids[0], 1, 0)
        assert set(service._encoded) == {(1, 1)}, "one shallow client still has to pull"
        again = await service.pull(ids[0], 1, 0)  # a retry of the same client changes nothing
        assert set(service._encoded) == {(1, 1)} and again.ready
        await service.pull(ids[1], 1, 0)
        await service.pull(ids[2], 1, 0)
        assert service._encoded == {}
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


async def test_pushes_reuse_the_slot_buffers_and_merge_correctly() -> None:
    plan = plan_job(tiny_job(tiers=[("shallow", 1, 1), ("deep", 3, 1)]), {})
    service = AggregatorService(plan)
    await service.start()
    try:
        addresses = []
        expected = {}
        for tier, depth, shift in (("deep", 3, 1.0), ("shallow", 1, 3.0)):
            client = service.join("tiny", tier, 0, depth).client.client_id
            update = {k: v + shift if v.is_floating_point() else v for k, v in service.agg.prefix_state(depth).items()}
            expected[depth] = update
            encoded = encode(update)
            ticket = service.begin_push(client, 1, 5, encoded.specs)
            async with service.push_slot() as buffer:
                payload = buffer.take(ticket.expected_bytes)
                payload[:] = encoded.payload
                addresses.append(_address(payload))
                assert await service.finish_push(ticket, payload) == 1
        assert addresses[0] == addresses[1], "one slot: the second push reused the first one's buffer"
        assert service.agg.completed_rounds == 1
        merged = service.agg.global_state
        # pad over two clients: the stem (sent by both) is the mean of their values.
        stem = next(k for k in expected[1] if k.startswith("stem") and merged[k].is_floating_point())
        assert torch.allclose(merged[stem], (expected[1][stem] + expected[3][stem]) / 2)
    finally:
        await service.stop()


async def test_every_depth_gets_exactly_its_prefix_from_the_shared_views() -> None:
    plan = plan_job(tiny_job(tiers=[("shallow", 1, 1), ("middle", 2, 1), ("deep", 3, 1)]), {})
    service = AggregatorService(plan)
    await service.start()
    try:
        ids = {d: service.join("tiny", t, 0, d).client.client_id for t, d in (("shallow", 1), ("middle", 2), ("deep", 3))}
        for depth, client in ids.items():
            pulled = await service.pull(client, 1, 0)
            assert pulled.encoded is not None
            assert b"".join(pb.ModelChunk.FromString(f).data for f in pulled.encoded.frames) == encode(
                service.agg.prefix_state(depth)
            ).payload
            assert [s.name for s in pulled.encoded.specs] == list(service.agg.expected_specs(depth))
    finally:
        await service.stop()


async def test_a_cancelled_push_keeps_its_buffer_until_its_fold_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client of a push goes away while its update is folded in the worker thread:
    # the slot's buffer must not reach the next push before that fold has read it.
    plan = plan_job(tiny_job(tiers=[("deep", 3, 2)]), {})
    service = AggregatorService(plan, Settings(max_concurrent_pushes=1))
    await service.start()
    try:
        ids = [service.join("tiny", "deep", r, 3).client.client_id for r in range(2)]
        updates = [
            {k: v + shift if v.is_floating_point() else v for k, v in service.agg.prefix_state(3).items()}
            for shift in (1.0, 3.0)
        ]
        fold = service.agg.fold
        folding = threading.Event()

        def slow_fold(*args: Any, **kwargs: Any) -> bool:
            folding.set()
            time.sleep(0.3)  # the worker still reads the buffer here
            return fold(*args, **kwargs)

        monkeypatch.setattr(service.agg, "fold", slow_fold)

        async def push(index: int) -> int:
            encoded = encode(updates[index])
            ticket = service.begin_push(ids[index], 1, 5, encoded.specs)
            async with service.push_slot() as buffer:
                payload = buffer.take(ticket.expected_bytes)
                payload[:] = encoded.payload
                return await service.finish_push(ticket, payload)

        first = asyncio.ensure_future(push(0))
        while not folding.is_set():
            await asyncio.sleep(0.01)
        first.cancel()
        second = asyncio.ensure_future(push(1))
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second == 1
        assert service.agg.completed_rounds == 1
        merged = service.agg.global_state
        for key, value in updates[0].items():  # the mean of both updates, none overwritten
            if value.is_floating_point():
                assert torch.allclose(merged[key], (value + updates[1][key]) / 2), key
        assert service.accepted == 2, "the cancelled push's update is counted as accepted"
    finally:
        await service.stop()
