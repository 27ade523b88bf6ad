"""The gRPC face of the aggregator: the only module of the aggregator that imports
grpc or protobuf messages. Each RPC is a thin shim over AggregatorService's public
methods (messages converted by flextrain.wire.serde); refusals map to status codes here
and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flextrain.aggregator.errors import Rejected
from flextrain.aggregator.service import AggregatorService
from flextrain.contract.refusals import Reason
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.wire.auth import REASON_KEY, token_matches
from flextrain.wire.frames import PUSH_READY_KEY, parse_update_chunk, serialize_chunk
from flextrain.wire.messages import ModelHeader, PushResult, UpdateHeader
from flextrain.wire.serde import (
    SpecDecoder,
    join_request_from_proto,
    joined_to_proto,
    model_header_to_proto,
    pull_request_from_proto,
    push_result_to_proto,
    update_header_from_proto,
)
from flextrain.wire.status import status_to_proto
from flextrain.wire.tensors import MAX_MESSAGE_BYTES, Framed, WireFormatError

log = logging.getLogger("flextrain.aggregator")

#: The status code of each refusal reason (the reason names it).
STATUS: dict[Reason, grpc.StatusCode] = {reason: grpc.StatusCode[reason.status] for reason in Reason}

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class AggregatorServicer(pb_grpc.AggregatorServicer):
    """Each RPC: messages from protobuf (flextrain.wire.serde), the service's public
    method, the answer to protobuf; a refusal becomes its reason's status code."""

    def __init__(self, service: AggregatorService, token: str) -> None:
        self.service = service
        self._token = token
        #: Decodes update headers; each depth's expected list is recognised at once.
        self._specs = SpecDecoder()
        #: Serialized ModelChunk header of each serialized prefix, while it is in use.
        self._model_headers: weakref.WeakKeyDictionary[Framed, bytes] = weakref.WeakKeyDictionary()

    def _update_header(self, message: pb.UpdateHeader) -> UpdateHeader:
        expected = self.service.expected_update(message.client_id)
        key = None
        if expected is not None:
            key = expected[0]
            if not self._specs.knows(key):
                self._specs.know(key, expected[1])
        try:
            return update_header_from_proto(message, self._specs, key)
        except WireFormatError as exc:
            raise self.service.refusal(Reason.MALFORMED, str(exc)) from exc

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        if not token_matches(context.invocation_metadata(), self._token):
            await self._abort(context, self.service.refusal(Reason.UNAUTHENTICATED, "missing or wrong job token"))

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Rejected) -> None:
        context.set_trailing_metadata(((REASON_KEY, exc.reason.value),))
        await context.abort(STATUS[exc.reason], str(exc))

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        await self._check(context)
        r = join_request_from_proto(request)
        try:
            joined = self.service.join(r.job, r.tier, r.replica_index, r.depth)
        except Rejected as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises
        return joined_to_proto(joined)

    async def PullModel(self, request: pb.PullModelRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelChunk | bytes]:
        await self._check(context)
        r = pull_request_from_proto(request)
        try:
            result = await self.service.pull(r.client_id, r.min_round, r.wait_seconds)
        except Rejected as exc:
            await self._abort(context, exc)
            return
        encoded = result.encoded
        if encoded is None:
            yield model_header_to_proto(ModelHeader(result.ready, result.done, result.round, [], 0))
            return
        header = self._model_headers.get(encoded)
        if header is None:  # the same for every client of this depth and round: built once
            header = model_header_to_proto(ModelHeader(True, False, result.round, encoded.specs, encoded.nbytes)).SerializeToString()
            self._model_headers[encoded] = header
        yield header
        async for frame in self.service.send(encoded):
            yield frame  # a serialized data chunk (see flextrain.wire.frames)

    async def PushUpdate(self, request_iterator: AsyncIterator[pb.UpdateChunk | memoryview], context: grpc.aio.ServicerContext) -> pb.PushUpdateResponse:
        await self._check(context)
        stream = request_iterator.__aiter__()
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = None
        try:
            if first is None or isinstance(first, memoryview) or first.WhichOneof("chunk") != "header":
                raise self.service.refusal(Reason.MALFORMED, "the first chunk of an update must be its header")
            header = self._update_header(first.header)
            ticket = self.service.begin_push(header.client_id, header.round, header.num_examples, header.specs)
            # The client sends its data once told to (it waits for this, so pushes
            # waiting their turn hold no data here).
            send = partial(context.send_initial_metadata, ((PUSH_READY_KEY, "1"),))
            async with self.service.receive_push(ticket, send) as push:
                async for chunk in stream:
                    if isinstance(chunk, memoryview):
                        data: bytes | memoryview = chunk  # framed data chunk (the usual case)
                    elif chunk.WhichOneof("chunk") == "data":
                        data = chunk.data
                    else:
                        raise self.service.refusal(Reason.MALFORMED, "only data chunks may follow the header")
                    await push.feed(data)
                counted = await push.finish()
        except Rejected as exc:
            await self._abort(context, exc)
            raise
        return push_result_to_proto(PushResult(accepted=True, round=counted, bytes_received=push.received))

    async def GetStatus(self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext) -> pb.GetStatusResponse:
        await self._check(context)
        return status_to_proto(self.service.status())


def add_servicer(servicer: AggregatorServicer, server: grpc.aio.Server) -> None:
    """Register the service as the generated ``add_AggregatorServicer_to_server`` does,
    except that the model and update chunk streams use the hand-framed data chunks of
    flextrain.wire.frames (same bytes on the wire, fewer copies)."""
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.Join,
            request_deserializer=pb.JoinRequest.FromString,
            response_serializer=pb.JoinResponse.SerializeToString,
        ),
        "PullModel": grpc.unary_stream_rpc_method_handler(
            servicer.PullModel,
            request_deserializer=pb.PullModelRequest.FromString,
            response_serializer=serialize_chunk,
        ),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.PushUpdate,
            request_deserializer=parse_update_chunk,
            response_serializer=pb.PushUpdateResponse.SerializeToString,
        ),
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetStatus,
            request_deserializer=pb.GetStatusRequest.FromString,
            response_serializer=pb.GetStatusResponse.SerializeToString,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["Aggregator"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


@dataclass
class TlsFiles:
    """Server certificate and key, and optionally a CA to require client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


class AggregatorServer:
    """The running gRPC server: servicer + health service + graceful stop."""

    def __init__(self, service: AggregatorService, token: str, *, host: str = "0.0.0.0", port: int = 50051, tls: TlsFiles | None = None) -> None:
        self.service = service
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        add_servicer(AggregatorServicer(service, token), self.server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{host}:{port}"
        self.port = (
            self.server.add_secure_port(address, tls.credentials()) if tls else self.server.add_insecure_port(address)
        )
        if self.port == 0:
            raise OSError(f"cannot listen on {address}: the port is in use or not allowed")

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", "flextrain.v1.Aggregator"):
            result: Any = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def start(self) -> None:
        await self.service.start()
        await self.server.start()
        await self._set_health(True)
        log.info("aggregator for job %s listening on port %d", self.service.name, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        await self._set_health(False)
        await self.server.stop(grace)
        await self.service.stop()

    async def serve_until_signal(self, on_started: Callable[[int], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT, then stop gracefully (in-flight RPCs get `grace`)."""
        await self.start()
        if on_started:
            on_started(self.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: stopping gracefully")
        await self.stop()
