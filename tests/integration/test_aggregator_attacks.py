"""The real aggregator process against a client that holds a credential and abuses it
(or a network that stalls): poisoned values, another replica's identity, garbage bytes,
a header listing hundreds of thousands of tensors, a push that stops sending. Each is
refused with its reason, changes nothing, and delays nobody else beyond a bound."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from torch import Tensor

from flextrain.contract.refusals import Reason
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.wire.auth import REASON_KEY, metadata
from flextrain.wire.serde import spec_from_proto, spec_to_proto
from flextrain.wire.tensors import decode, encode
from tests.integration.procs import TOKEN, Cluster, make_cluster, replica_auth, tiny_job

JOB = "attacks"
DEPTHS = {"shallow": 1, "deep": 3}
IDLE = 1.0  # the aggregator's push idle timeout in this module
GRACE = 3.0  # and its grace
Code = grpc.StatusCode


def auth(client: str) -> tuple[tuple[str, str], ...]:
    tier, _, replica = client.rpartition("-")
    return replica_auth(JOB, tier, int(replica), DEPTHS[tier])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    job = tiny_job(JOB, tiers=[("shallow", 1, 2), ("deep", 3, 1)])
    made = make_cluster(Path(tmp_path_factory.mktemp(JOB)), job)
    try:
        made.start_aggregator("--push-idle-seconds", str(IDLE), "--push-grace-seconds", str(GRACE), checkpoints=False)
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def channel(server: Cluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.AggregatorStub:
    return pb_grpc.AggregatorStub(channel)


def join(stub: pb_grpc.AggregatorStub, client: str) -> str:
    tier, _, replica = client.rpartition("-")
    request = pb.JoinRequest(job=JOB, tier=tier, replica_index=int(replica), depth=DEPTHS[tier])
    return str(stub.Join(request, metadata=auth(client)).client_id)


def pull(stub: pb_grpc.AggregatorStub, client: str, min_round: int = 1) -> tuple[int, dict[str, Tensor], str]:
    stream = stub.PullModel(pb.PullModelRequest(client_id=client, min_round=min_round, wait_seconds=20), metadata=auth(client))
    header = next(stream).header
    payload = b"".join(c.data for c in stream)
    return header.round, decode([spec_from_proto(t) for t in header.tensors], payload), hashlib.sha256(payload).hexdigest()


def chunks(client: str, tensors: dict[str, Tensor], round_number: int = 1, examples: int = 10) -> list[pb.UpdateChunk]:
    encoded = encode(tensors)
    header = pb.UpdateChunk(
        header=pb.UpdateHeader(
            client_id=client, round=round_number, num_examples=examples, tensors=[spec_to_proto(s) for s in encoded.specs]
        )
    )
    payload = encoded.payload
    return [header, *(pb.UpdateChunk(data=payload[i : i + 65536]) for i in range(0, len(payload), 65536))]


def push(stub: pb_grpc.AggregatorStub, client: str, tensors: dict[str, Tensor], *, as_: str | None = None) -> pb.PushUpdateResponse:
    return stub.PushUpdate(iter(chunks(client, tensors)), metadata=auth(as_ or client), timeout=30)


def refused(call: object, code: grpc.StatusCode, reason: Reason, *words: str) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, f"{error.code()}: {error.details()}"
    assert dict(error.trailing_metadata() or ()).get(REASON_KEY) == reason.value, error.trailing_metadata()
    for word in words:
        assert word in error.details(), error.details()
    return error


def status(stub: pb_grpc.AggregatorStub) -> pb.GetStatusResponse:
    return stub.GetStatus(pb.GetStatusRequest(), metadata=metadata(TOKEN), timeout=10)


def test_a_replica_cannot_act_as_another(stub: pb_grpc.AggregatorStub) -> None:
    for client in ("shallow-0", "shallow-1", "deep-0"):
        join(stub, client)
    _, model, digest = pull(stub, "shallow-0")
    # shallow-0's credential joins, pulls and pushes as shallow-0 only.
    other = pb.JoinRequest(job=JOB, tier="shallow", replica_index=1, depth=1)
    refused(lambda: stub.Join(other, metadata=auth("shallow-0")), Code.PERMISSION_DENIED, Reason.WRONG_IDENTITY, "replica 1")
    deeper = pb.JoinRequest(job=JOB, tier="deep", replica_index=0, depth=3)
    refused(lambda: stub.Join(deeper, metadata=auth("shallow-0")), Code.PERMISSION_DENIED, Reason.WRONG_IDENTITY, "'deep'")
    refused(
        lambda: next(stub.PullModel(pb.PullModelRequest(client_id="shallow-1", min_round=1), metadata=auth("shallow-0"))),
        Code.PERMISSION_DENIED,
        Reason.WRONG_IDENTITY,
        "shallow-1",
    )
    refused(lambda: push(stub, "shallow-1", model, as_="shallow-0"), Code.PERMISSION_DENIED, Reason.WRONG_IDENTITY, "shallow-1")
    # The job token (the operator's, for GetStatus) does not train at all.
    refused(
        lambda: stub.PushUpdate(iter(chunks("shallow-1", model)), metadata=metadata(TOKEN)),
        Code.PERMISSION_DENIED,
        Reason.WRONG_IDENTITY,
        "job token",
    )
    # A forged credential (right identity, MAC from another token) does not verify.
    forged = replica_auth(JOB, "shallow", 1, 1, token="guessed")
    refused(lambda: stub.Join(other, metadata=forged), Code.UNAUTHENTICATED, Reason.UNAUTHENTICATED)
    assert pull(stub, "shallow-0")[2] == digest
    assert status(stub).updates_accepted == 0


def test_poisoned_values_are_refused_and_change_nothing(stub: pb_grpc.AggregatorStub) -> None:
    join(stub, "deep-0")
    _, model, digest = pull(stub, "deep-0")
    huge = {k: v.clone() for k, v in model.items()}
    huge["head.fc.bias"][0] = 3e38  # finite: the merged model would be infinite
    refused(lambda: push(stub, "deep-0", huge), Code.INVALID_ARGUMENT, Reason.OUT_OF_BOUNDS, "head.fc.bias")
    counter = next(k for k in model if k.endswith("num_batches_tracked"))
    maxed = {k: v.clone() for k, v in model.items()}
    maxed[counter] = torch.tensor(2**63 - 1)  # would win a merge by maximum
    refused(lambda: push(stub, "deep-0", maxed), Code.INVALID_ARGUMENT, Reason.OUT_OF_BOUNDS, counter)
    assert pull(stub, "deep-0")[2] == digest
    assert status(stub).updates_accepted == 0


def test_undecodable_bytes_are_a_malformed_refusal_after_the_token(channel: grpc.Channel, stub: pb_grpc.AggregatorStub) -> None:
    raw_join = channel.unary_unary("/flextrain.v1.Aggregator/Join", _registered_method=False)
    garbage = b"\xff\xff\xff\xff\x0f"
    refused(lambda: raw_join(garbage, metadata=auth("shallow-0")), Code.INVALID_ARGUMENT, Reason.MALFORMED, "JoinRequest")
    # tier = b"\xff\xfe": a string field that is no UTF-8.
    bad_utf8 = bytes(pb.JoinRequest(job=JOB).SerializeToString()) + b"\x12\x02\xff\xfe"
    refused(lambda: raw_join(bad_utf8, metadata=auth("shallow-0")), Code.INVALID_ARGUMENT, Reason.MALFORMED)
    # Without a credential the body is never decoded: the token is checked first.
    refused(lambda: raw_join(garbage), Code.UNAUTHENTICATED, Reason.UNAUTHENTICATED)
    raw_push = channel.stream_unary("/flextrain.v1.Aggregator/PushUpdate", _registered_method=False)
    refused(lambda: raw_push(iter([garbage]), metadata=auth("shallow-0")), Code.INVALID_ARGUMENT, Reason.MALFORMED)
    assert status(stub).updates_rejected["malformed"] >= 3


def test_a_huge_header_is_refused_at_once_and_health_stays_answered(stub: pb_grpc.AggregatorStub, server: Cluster) -> None:
    join(stub, "shallow-1")
    # The probe has its own connection, as a kubelet's has: on the pushing one, its
    # request would queue behind the header's megabytes in the transport.
    probes = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(probes)
    worst = 0.0
    stop = threading.Event()

    def probe() -> None:
        nonlocal worst
        while not stop.is_set():
            started = time.monotonic()
            health.Check(health_pb2.HealthCheckRequest(service="flextrain.v1.Aggregator"), timeout=5)
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.005)

    spec = pb.TensorSpec(name="t", shape=[1], dtype=pb.DTYPE_FLOAT32)
    # 400,000 tensors (2.4 MB, within gRPC's message limit); and 60,000 (0.4 MB, within
    # the header's byte bound, beyond the model's tensor count).
    headers = [
        pb.UpdateChunk(header=pb.UpdateHeader(client_id="shallow-1", round=1, num_examples=1, tensors=[spec] * n))
        for n in (400_000, 60_000)
    ]
    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.5)
    idle_worst, worst = worst, 0.0  # on this machine, now, with nothing else sent
    try:
        for header, words in zip(headers, (("bytes",), ("60000 tensors",)), strict=True):
            started = time.monotonic()
            refused(lambda h=header: stub.PushUpdate(iter([h]), metadata=auth("shallow-1")), Code.INVALID_ARGUMENT, Reason.MALFORMED, *words)
            assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        thread.join()
        probes.close()
    # Answered within 50 ms beyond the slowest check without the headers (a loaded
    # machine's own scheduling delay), as the event loop never blocks on them.
    assert worst < idle_worst + 0.05, f"a health check took {worst * 1000:.0f} ms ({idle_worst * 1000:.0f} ms before)"


def test_a_stalled_push_does_not_hold_up_the_others(stub: pb_grpc.AggregatorStub) -> None:
    for client in ("shallow-0", "shallow-1"):
        join(stub, client)
    number, model, _ = pull(stub, "shallow-0")
    stalled_chunks = chunks("shallow-0", model, round_number=number)
    release = threading.Event()

    def stalling() -> Iterator[pb.UpdateChunk]:
        yield stalled_chunks[0]  # the header, then the first chunk, then nothing
        yield stalled_chunks[1]
        release.wait(30)

    stalled = stub.PushUpdate.future(stalling(), metadata=auth("shallow-0"), timeout=30)
    time.sleep(0.3)  # its turn has come: it holds the receive slot
    started = time.monotonic()
    try:
        accepted = stub.PushUpdate(iter(chunks("shallow-1", model, round_number=number)), metadata=auth("shallow-1"), timeout=30)
        waited = time.monotonic() - started
        assert accepted.accepted
        # Behind a client that sends nothing, another push waits one idle timeout at most.
        assert waited < IDLE + 1.0, f"the accepted push waited {waited:.2f} s"
        with pytest.raises(grpc.RpcError) as info:
            stalled.result(timeout=10)
        assert info.value.code() == Code.DEADLINE_EXCEEDED
        assert dict(info.value.trailing_metadata() or ()).get(REASON_KEY) == Reason.PUSH_TIMEOUT.value
        assert "idle timeout" in info.value.details()
    finally:
        release.set()
    # A push that never sends its header holds nothing, and is ended too.
    silent = threading.Event()

    def no_header() -> Iterator[pb.UpdateChunk]:
        silent.wait(30)
        yield from ()

    started = time.monotonic()
    refused(lambda: stub.PushUpdate(no_header(), metadata=auth("shallow-0"), timeout=30), Code.DEADLINE_EXCEEDED, Reason.PUSH_TIMEOUT, "no header")
    silent.set()
    assert time.monotonic() - started < IDLE + 1.0
    # The stalled client's retry is taken: nothing of its first try was counted.
    assert stub.PushUpdate(iter(stalled_chunks), metadata=auth("shallow-0"), timeout=30).accepted


def test_a_trickling_push_is_cut_at_the_minimum_rate(stub: pb_grpc.AggregatorStub) -> None:
    join(stub, "deep-0")
    number, model, _ = pull(stub, "deep-0")
    update = chunks("deep-0", model, round_number=number)
    done = threading.Event()

    def trickle() -> Iterator[pb.UpdateChunk]:
        yield update[0]
        # A few bytes just inside the idle timeout each time: far below 256 KiB/s.
        for piece in update[1:]:
            for i in range(0, len(piece.data), 16):
                if done.wait(IDLE * 0.6):
                    return
                yield pb.UpdateChunk(data=piece.data[i : i + 16])

    started = time.monotonic()
    error = refused(lambda: stub.PushUpdate(trickle(), metadata=auth("deep-0"), timeout=30), Code.DEADLINE_EXCEEDED, Reason.PUSH_TIMEOUT)
    done.set()
    assert "minimum" in error.details()
    # Grace plus what its bytes take at the minimum rate: a few seconds, not the stream's life.
    assert time.monotonic() - started < GRACE + IDLE + 2.0
