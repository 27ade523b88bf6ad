"""Every bad request is refused with a precise status, counted by reason, and leaves
the global model bitwise unchanged; the server stays healthy."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from torch import Tensor

from flextrain.contract.credentials import tier_key
from flextrain.contract.refusals import Reason
from flextrain.core.merge import merge
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.trainer.client import AggregatorClient, Fatal, Rejoin, Stale
from flextrain.trainer.config import TrainerConfig
from flextrain.wire.auth import REASON_KEY, metadata
from flextrain.wire.serde import spec_from_proto, spec_to_proto
from flextrain.wire.tensors import Spec, decode, encode
from tests.integration.procs import TOKEN, Cluster, make_cluster, replica_auth, tiny_job

AUTH = metadata(TOKEN)
DEPTHS = {"shallow": 1, "deep": 3}
Code = grpc.StatusCode


def auth(tier: str, replica: int = 0, depth: int | None = None) -> tuple[tuple[str, str], ...]:
    """The replica credential's metadata (at its tier's depth unless `depth`)."""
    return replica_auth("rejects", tier, replica, depth if depth is not None else DEPTHS.get(tier, 1))


def client_auth(client: str) -> tuple[tuple[str, str], ...]:
    tier, _, replica = client.rpartition("-")
    return auth(tier, int(replica))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    job = tiny_job("rejects", tiers=[("shallow", 1, 1), ("deep", 3, 1)])
    made = make_cluster(Path(tmp_path_factory.mktemp("rejects")), job)
    try:
        made.start_aggregator(checkpoints=False)
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def stub(server: Cluster) -> Iterator[pb_grpc.AggregatorStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.AggregatorStub(channel)
    channel.close()


def join(stub: pb_grpc.AggregatorStub, tier: str, depth: int) -> pb.JoinResponse:
    return stub.Join(pb.JoinRequest(job="rejects", tier=tier, replica_index=0, depth=depth), metadata=auth(tier, 0, depth))


def pull(stub: pb_grpc.AggregatorStub, client: str, min_round: int = 1) -> tuple[int, dict[str, Tensor], str]:
    stream = stub.PullModel(
        pb.PullModelRequest(client_id=client, min_round=min_round, wait_seconds=20), metadata=client_auth(client)
    )
    header = next(stream).header
    payload = b"".join(c.data for c in stream)
    specs = [spec_from_proto(t) for t in header.tensors]
    return header.round, decode(specs, payload), hashlib.sha256(payload).hexdigest()


def push(
    stub: pb_grpc.AggregatorStub,
    client: str,
    tensors: dict[str, Tensor],
    *,
    round_number: int = 1,
    examples: int = 100,
    specs: list[Spec] | None = None,
    extra_bytes: bytes = b"",
    cut_bytes: int = 0,
    header_first: bool = True,
) -> pb.PushUpdateResponse:
    encoded = encode(tensors)
    payload = encoded.payload + extra_bytes
    if cut_bytes:
        payload = payload[:-cut_bytes]
    header = pb.UpdateChunk(
        header=pb.UpdateHeader(
            client_id=client,
            round=round_number,
            num_examples=examples,
            tensors=[spec_to_proto(s) for s in (specs or encoded.specs)],
        )
    )
    data = [pb.UpdateChunk(data=payload[i : i + (1 << 20)]) for i in range(0, len(payload), 1 << 20)]
    chunks = [header, *data] if header_first else [*data, header]
    return stub.PushUpdate(iter(chunks), metadata=client_auth(client), timeout=30)


def refused(call: object, code: grpc.StatusCode, *words: str) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, f"{error.code()}: {error.details()}"
    # The reason in the trailing metadata names the status it came with.
    reason = Reason.from_wire(dict(error.trailing_metadata() or ()).get(REASON_KEY, ""))
    assert reason is not None and reason.status == code.name, (reason, code)
    for word in words:
        assert word in error.details(), error.details()
    return error


def test_bad_requests_are_refused_and_change_nothing(server: Cluster, stub: pb_grpc.AggregatorStub) -> None:
    shallow = join(stub, "shallow", 1).client_id
    deep = join(stub, "deep", 3).client_id
    _, global_deep, digest = pull(stub, deep)
    _, global_shallow, _ = pull(stub, shallow)
    assert all(not k.startswith(("blocks.1.", "blocks.2.")) for k in global_shallow), "weak tier got a deep block"

    def with_(base: dict[str, Tensor], **changes: Tensor) -> dict[str, Tensor]:
        out = dict(base)
        out.update({k.replace("__", "."): v for k, v in changes.items()})
        return out

    w = "stem.conv.weight"
    nan = global_shallow[w].clone()
    nan.view(-1)[3] = float("nan")
    inf = global_shallow[w].clone()
    inf.view(-1)[0] = float("inf")
    deep_key = next(k for k in global_deep if k.startswith("blocks.2."))
    missing = {k: v for k, v in global_shallow.items() if k != "head.fc.bias"}
    wrong_shape = with_(global_shallow, stem__conv__weight=torch.zeros(3, 3))
    half = dict(global_shallow)
    half_specs = [Spec(s.name, s.shape, torch.float16) if s.name == w else s for s in encode(half).specs]

    bad_token = (("authorization", "Bearer nope"),)
    refused(lambda: stub.GetStatus(pb.GetStatusRequest(), metadata=bad_token), Code.UNAUTHENTICATED, "token")
    refused(lambda: stub.Join(pb.JoinRequest(job="rejects", tier="deep", depth=3)), Code.UNAUTHENTICATED)
    # The job token does not train; a credential of another job or tier does not verify.
    refused(lambda: stub.Join(pb.JoinRequest(job="rejects", tier="deep", depth=3), metadata=AUTH), Code.PERMISSION_DENIED, "job token")
    other_job = replica_auth("other", "deep", 0, 3)
    refused(lambda: stub.Join(pb.JoinRequest(job="other", tier="deep", depth=3), metadata=other_job), Code.UNAUTHENTICATED, "credential")
    refused(lambda: stub.Join(pb.JoinRequest(job="rejects", tier="gpu", depth=3), metadata=auth("gpu", 0, 3)), Code.UNAUTHENTICATED)
    refused(lambda: stub.Join(pb.JoinRequest(job="other", tier="deep", depth=3), metadata=auth("deep")), Code.NOT_FOUND, "other")
    # A 1 MiB tier name is not echoed back in full (nor logged: the same message).
    huge = refused(
        lambda: stub.Join(pb.JoinRequest(job="rejects", tier="t" * (1 << 20), depth=3), metadata=auth("deep")),
        Code.PERMISSION_DENIED,
        "characters cut",
    )
    assert len(huge.details()) < 600
    refused(lambda: join(stub, "deep", 2), Code.FAILED_PRECONDITION, "depth 3")
    refused(
        lambda: stub.Join(pb.JoinRequest(job="rejects", tier="deep", replica_index=4, depth=3), metadata=auth("deep", 4)),
        Code.INVALID_ARGUMENT,
        "replica_index 4",
    )
    refused(lambda: push(stub, "deep-5", global_deep), Code.FAILED_PRECONDITION, "deep-5")
    refused(lambda: push(stub, shallow, global_shallow, round_number=0), Code.FAILED_PRECONDITION, "round 0")
    refused(lambda: push(stub, shallow, global_shallow, round_number=7), Code.INVALID_ARGUMENT, "round 7")
    refused(lambda: push(stub, shallow, with_(global_shallow, **{deep_key.replace(".", "__"): global_deep[deep_key]})), Code.PERMISSION_DENIED, deep_key)
    refused(lambda: push(stub, shallow, missing), Code.INVALID_ARGUMENT, "head.fc.bias", "missing")
    refused(lambda: push(stub, shallow, with_(global_shallow, extra__weight=torch.ones(2))), Code.INVALID_ARGUMENT, "extra.weight")
    refused(lambda: push(stub, shallow, wrong_shape), Code.INVALID_ARGUMENT, w, "shape")
    refused(lambda: push(stub, shallow, half, specs=half_specs), Code.INVALID_ARGUMENT, w, "dtype")
    refused(lambda: push(stub, shallow, with_(global_shallow, stem__conv__weight=nan)), Code.INVALID_ARGUMENT, w, "NaN")
    refused(lambda: push(stub, shallow, with_(global_shallow, stem__conv__weight=inf)), Code.INVALID_ARGUMENT, w, "infinite")
    refused(lambda: push(stub, shallow, global_shallow, examples=0), Code.INVALID_ARGUMENT, "num_examples")
    # A count beyond the sender's shard would decide a weighted merge alone.
    refused(lambda: push(stub, shallow, global_shallow, examples=2**62), Code.INVALID_ARGUMENT, "num_examples", "shard")
    refused(lambda: push(stub, shallow, global_shallow, extra_bytes=b"\0" * 8), Code.RESOURCE_EXHAUSTED, "bytes")
    refused(lambda: push(stub, shallow, global_shallow, cut_bytes=4), Code.INVALID_ARGUMENT, "bytes")
    refused(lambda: push(stub, shallow, global_shallow, header_first=False), Code.INVALID_ARGUMENT, "header")

    # Nothing moved: the model pulled now is byte-identical ...
    assert pull(stub, deep)[2] == digest
    # ... and the round's running sums are untouched: a valid round merges exactly as
    # the pad strategy does with only the two valid updates.
    update_shallow = {k: v + 0.5 if v.is_floating_point() else v for k, v in global_shallow.items()}
    update_deep = {k: v - 0.25 if v.is_floating_point() else v for k, v in global_deep.items()}
    assert push(stub, shallow, update_shallow, examples=300).accepted
    refused(lambda: push(stub, shallow, update_shallow), Code.ALREADY_EXISTS, "already pushed")
    assert push(stub, deep, update_deep, examples=100).accepted
    round_number, merged, _ = pull(stub, deep, min_round=2)
    assert round_number == 2
    expected = merge("pad", global_deep, [(update_shallow, 300), (update_deep, 100)])
    for key, tensor in expected.items():
        assert torch.equal(merged[key], tensor), key

    status = stub.GetStatus(pb.GetStatusRequest(), metadata=AUTH)
    rejected = dict(status.updates_rejected)
    for reason in (
        "unauthenticated", "wrong_identity", "wrong_job", "depth_mismatch", "bad_replica", "unknown_client",
        "stale_round", "future_round", "too_deep", "missing_tensor", "unknown_tensor", "shape_mismatch",
        "dtype_mismatch", "non_finite", "bad_examples", "too_large", "truncated", "malformed", "duplicate",
    ):
        assert rejected.get(reason, 0) >= 1, (reason, rejected)
    assert status.updates_accepted == 2

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="flextrain.v1.Aggregator"))
    channel.close()
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_trainer_does_what_each_refusals_reason_says(server: Cluster) -> None:
    """The trainer's client against the real server: a forgotten client re-joins, a
    late or second update moves on to the next round, anything else is given up."""
    address = f"127.0.0.1:{server.port}"
    client = AggregatorClient(TrainerConfig(address, tier_key(TOKEN, "rejects", "shallow"), "rejects", "shallow", 1, 0))
    unknown = AggregatorClient(TrainerConfig(address, tier_key(TOKEN, "rejects", "deep"), "rejects", "deep", 3, 7))
    wrong_tier = AggregatorClient(TrainerConfig(address, tier_key(TOKEN, "rejects", "gpu"), "rejects", "gpu", 1, 0))
    try:
        with pytest.raises(Rejoin, match="FAILED_PRECONDITION"):
            unknown.pull("deep-7", 1, wait_seconds=0)
        with pytest.raises(Fatal, match="UNAUTHENTICATED"):
            wrong_tier.join()
        joined = client.join()
        pulled = client.pull(joined.client_id, joined.round, wait_seconds=20)
        wire = joined.training.wire_dtype
        with pytest.raises(Stale, match="FAILED_PRECONDITION"):  # stale_round
            client.push(joined.client_id, pulled.round - 1, pulled.tensors, 10, wire, 0.0, 0.0)
        client.push(joined.client_id, pulled.round, pulled.tensors, 10, wire, 0.0, 0.0)
        with pytest.raises(Stale, match="ALREADY_EXISTS"):  # duplicate
            client.push(joined.client_id, pulled.round, pulled.tensors, 10, wire, 0.0, 0.0)
        other = AggregatorClient(TrainerConfig(address, tier_key(TOKEN, "rejects", "deep"), "rejects", "deep", 3, 0))
        try:
            deep = other.join()
            deep_tensors = other.pull(deep.client_id, deep.round, wait_seconds=20).tensors
            nan = {k: v.clone() for k, v in deep_tensors.items()}
            nan["stem.conv.weight"].view(-1)[0] = float("nan")
            with pytest.raises(Fatal, match="INVALID_ARGUMENT"):  # non_finite
                other.push(deep.client_id, deep.round, nan, 10, wire, 0.0, 0.0)
        finally:
            other.close()
    finally:
        client.close()
        unknown.close()
        wrong_tier.close()
