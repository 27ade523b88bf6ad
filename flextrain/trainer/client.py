"""The trainer's side of the protocol: the only trainer module that imports grpc.

Maps gRPC outcomes to what the loop must do: retry later (the aggregator is restarting
or unreachable), re-join (the aggregator restarted and forgot us), skip to the next
round (our update was stale), or give up (wrong token, wrong job, invalid config).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from torch import Tensor

from flextrain import backoff
from flextrain.contract.credentials import ReplicaIdentity, replica_credential
from flextrain.contract.refusals import Reason, Remedy
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.trainer.config import TrainerConfig
from flextrain.wire.auth import REASON_KEY, replica_metadata
from flextrain.wire.frames import data_frames, parse_model_chunk, serialize_chunk
from flextrain.wire.messages import Joined, JoinRequest, PullRequest, UpdateHeader
from flextrain.wire.serde import (
    SpecDecoder,
    join_request_to_proto,
    joined_from_proto,
    model_header_from_proto,
    pull_request_to_proto,
    update_header_to_proto,
)
from flextrain.wire.tensors import (
    CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    ReceiveBuffer,
    decode,
    tensor_views,
)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    # The aggregator's Service is headless: a rescheduled aggregator has a new address,
    # looked up again at most a second after the old one stops answering (gRPC's
    # default waits 30 s between lookups).
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
]

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}


class Retry(Exception):
    """Transient: the aggregator is unavailable; back off and try again."""


class Rejoin(Exception):
    """The aggregator does not know this client (it restarted): join again."""


class Stale(Exception):
    """The update's round closed before it arrived: pull the next round."""


class Fatal(Exception):
    """Permanent: retrying cannot help (auth, wrong job, bad configuration)."""


#: The exception of each remedy a refusal's reason names (flextrain.contract.refusals).
_REMEDIES: dict[Remedy, type[Exception]] = {
    Remedy.REJOIN: Rejoin,
    Remedy.NEXT_ROUND: Stale,
    Remedy.GIVE_UP: Fatal,
    Remedy.RETRY: Retry,
}


def _classify(error: grpc.RpcError) -> Exception:
    """What the loop does about a failed call: transport trouble is retried; a refusal
    is handled as its reason's remedy says (an unknown reason: given up)."""
    code = error.code()
    message = f"{code.name}: {error.details()}"
    if code in _RETRYABLE:
        return Retry(message)
    reason = Reason.from_wire(dict(error.trailing_metadata() or ()).get(REASON_KEY, ""))
    remedy = reason.remedy if reason is not None else Remedy.GIVE_UP
    return _REMEDIES[remedy](message)


@dataclass
class Pulled:
    ready: bool
    done: bool
    round: int
    tensors: dict[str, Tensor]
    nbytes: int


class AggregatorClient:
    """Blocking client of one aggregator."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        identity = ReplicaIdentity(config.tier, config.depth, config.replica_index)
        self._metadata = replica_metadata(replica_credential(config.tier_key, identity))
        if config.tls_ca:
            key = config.tls_key.read_bytes() if config.tls_key else None
            cert = config.tls_cert.read_bytes() if config.tls_cert else None
            creds = grpc.ssl_channel_credentials(config.tls_ca.read_bytes(), key, cert)
            options: list[tuple[str, Any]] = list(CHANNEL_OPTIONS)
            if config.tls_server_name:
                options.append(("grpc.ssl_target_name_override", config.tls_server_name))
            self.channel = grpc.secure_channel(config.aggregator, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(config.aggregator, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.AggregatorStub(self.channel)  # type: ignore[no-untyped-call]
        self._buffer = ReceiveBuffer()
        self._specs = SpecDecoder()  # every pull of this client's depth lists the same tensors
        # The chunk streams with hand-framed data chunks (flextrain.wire.frames): same
        # bytes on the wire as the generated stub's, fewer copies.
        method = f"/{pb.DESCRIPTOR.services_by_name['Aggregator'].full_name}/"
        self._pull_model = self.channel.unary_stream(
            method + "PullModel",
            request_serializer=pb.PullModelRequest.SerializeToString,
            response_deserializer=parse_model_chunk,
            _registered_method=True,
        )
        self._push_update = self.channel.stream_unary(
            method + "PushUpdate",
            request_serializer=serialize_chunk,
            response_deserializer=pb.PushUpdateResponse.FromString,
            _registered_method=True,
        )

    def close(self) -> None:
        self.channel.close()

    def join(self) -> Joined:
        c = self.config
        try:
            r = self.stub.Join(
                join_request_to_proto(JoinRequest(c.job, c.tier, c.replica_index, c.depth)),
                metadata=self._metadata,
                timeout=30,
            )
        except grpc.RpcError as exc:
            raise _classify(exc) from None
        return joined_from_proto(r)

    def pull(self, client_id: str, min_round: int, wait_seconds: float = 30.0, *, reuse_buffer: bool = False) -> Pulled:
        """The model of `min_round` or later (waiting up to `wait_seconds` for it).

        The tensors are views into the buffer the model was received into. With
        `reuse_buffer` that buffer is this client's receive buffer, which the next pull
        with `reuse_buffer` overwrites: use it when the tensors are consumed (loaded
        into a model, pushed) before the next pull. It saves the page faults of a new
        model-sized buffer on every pull, a cost like that of receiving the bytes.
        """
        try:
            stream = self._pull_model(
                pull_request_to_proto(PullRequest(client_id, min_round, wait_seconds)),
                metadata=self._metadata,
                timeout=wait_seconds + 300,
            )
            first = next(stream)
            if isinstance(first, memoryview) or first.WhichOneof("chunk") != "header":
                stream.cancel()
                raise Retry("the model stream did not start with its header")
            header = model_header_from_proto(first.header, self._specs)
            payload = self._buffer.take(header.total_bytes) if reuse_buffer else memoryview(bytearray(header.total_bytes))
            received = 0
            for chunk in stream:
                data = chunk if isinstance(chunk, memoryview) else chunk.data
                if received + len(data) > len(payload):
                    stream.cancel()
                    raise Retry(f"the model stream carries more than the {len(payload)} bytes its header announced")
                payload[received : received + len(data)] = data
                received += len(data)
        except grpc.RpcError as exc:
            raise _classify(exc) from None
        if not header.ready:
            return Pulled(False, header.done, header.round, {}, 0)
        if received != len(payload):
            raise Retry(f"the model stream ended after {received} of {len(payload)} bytes")
        # The buffer is not written again while the tensors are in use (see above): its
        # float32 tensors are used in place, not copied.
        return Pulled(True, False, header.round, decode(header.specs, payload, copy=False), received)

    def push(self, client_id: str, round_number: int, tensors: Mapping[str, Tensor], num_examples: int, wire_dtype: torch.dtype, train_loss: float, train_seconds: float) -> int:
        """Send an update: floating tensors travel as `wire_dtype` (the job's, from
        ``Joined.training``); returns the payload bytes sent."""
        specs, views = tensor_views(tensors, wire_dtype)
        header = update_header_to_proto(UpdateHeader(client_id, round_number, num_examples, specs, train_loss, train_seconds))

        call: list[grpc.Future] = []  # the call, once started (the generator runs after)
        started = threading.Event()

        def chunks() -> Iterator[pb.UpdateChunk | bytes]:
            yield header
            # The aggregator receives one push at a time and says when it is this one's
            # turn with its initial metadata (flextrain.wire.frames.PUSH_READY_KEY);
            # sending before would only park the data in buffers on both sides.
            started.wait()
            call[0].initial_metadata()
            if call[0].done():  # refused (or failed) on its header: nothing to send
                return
            # Each chunk is framed straight from the tensors' memory as it is sent.
            yield from data_frames(views, CHUNK_BYTES)

        try:
            call.append(self._push_update.future(chunks(), metadata=self._metadata, timeout=600))
            started.set()
            call[0].result()
        except grpc.RpcError as exc:
            raise _classify(exc) from None
        return sum(len(v) for v in views)


def backoff_delays(base: float = 0.5, cap: float = 30.0, seed: int | None = None) -> Iterator[float]:
    """The shared backoff (flextrain.backoff) with full jitter: 0..base, 0..2*base, ...
    capped at `cap`, so trainers cut off together do not come back together."""
    import random

    rng = random.Random(seed if seed is not None else time.time_ns())
    return backoff.backoff_delays(base=base, cap=cap, rng=rng)
