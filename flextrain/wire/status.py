"""GetStatus, torch-free: the status as plain Python, its to_proto/from_proto pair, and
a small client (the local runner's progress display and the operator's status timer
read the aggregator through it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.wire.auth import metadata


@dataclass(frozen=True)
class TierStatus:
    tier: str
    depth: int
    replicas: int
    joined: int
    pushed_this_round: int
    last_round_pushed: int
    bytes_received: int
    bytes_sent: int


@dataclass(frozen=True)
class AggregatorStatus:
    job: str
    round: int
    total_rounds: int
    done: bool
    tiers: list[TierStatus]
    #: depth -> (accuracy, round of the evaluation)
    accuracy: dict[int, tuple[float, int]]
    rejected: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    clients_connected: int = 0
    round_deadline_unix: float = 0.0
    round_started_unix: float = 0.0


def status_to_proto(status: AggregatorStatus) -> pb.GetStatusResponse:
    return pb.GetStatusResponse(
        job=status.job,
        round=status.round,
        total_rounds=status.total_rounds,
        done=status.done,
        tiers=[
            pb.TierProgress(
                tier=t.tier,
                depth=t.depth,
                replicas=t.replicas,
                joined=t.joined,
                pushed_this_round=t.pushed_this_round,
                last_round_pushed=t.last_round_pushed,
                bytes_received=t.bytes_received,
                bytes_sent=t.bytes_sent,
            )
            for t in status.tiers
        ],
        accuracy=[pb.DepthAccuracy(depth=d, accuracy=a, round=r) for d, (a, r) in sorted(status.accuracy.items())],
        updates_rejected=status.rejected,
        updates_accepted=status.accepted,
        clients_connected=status.clients_connected,
        round_started_unix=status.round_started_unix,
        round_deadline_unix=status.round_deadline_unix,
    )


def status_from_proto(r: pb.GetStatusResponse) -> AggregatorStatus:
    return AggregatorStatus(
        job=r.job,
        round=r.round,
        total_rounds=r.total_rounds,
        done=r.done,
        tiers=[
            TierStatus(t.tier, t.depth, t.replicas, t.joined, t.pushed_this_round, t.last_round_pushed, t.bytes_received, t.bytes_sent)
            for t in r.tiers
        ],
        accuracy={a.depth: (a.accuracy, a.round) for a in r.accuracy},
        rejected=dict(r.updates_rejected),
        accepted=r.updates_accepted,
        clients_connected=r.clients_connected,
        round_deadline_unix=r.round_deadline_unix,
        round_started_unix=r.round_started_unix,
    )


class StatusUnavailable(Exception):
    """The aggregator could not be reached or refused the call."""


class StatusClient:
    """GetStatus of one aggregator. With `ca` (PEM), over TLS: the aggregator's
    certificate must chain to `ca` and carry `server_name` (default: the address's host)."""

    def __init__(
        self, address: str, token: str, *, ca: bytes | None = None, server_name: str | None = None
    ) -> None:
        # The aggregator's Service is headless: look its address up again soon after a
        # reschedule (gRPC's default waits 30 s between lookups).
        options: list[tuple[str, Any]] = [("grpc.dns_min_time_between_resolutions_ms", 1_000)]
        if ca is not None:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.AggregatorStub(self.channel)  # type: ignore[no-untyped-call]
        self._metadata = metadata(token)

    def get(self, timeout: float = 5.0) -> AggregatorStatus:
        try:
            r = self.stub.GetStatus(pb.GetStatusRequest(), metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise StatusUnavailable(f"{exc.code().name}: {exc.details()}") from None
        return status_from_proto(r)

    def close(self) -> None:
        self.channel.close()
