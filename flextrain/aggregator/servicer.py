"""The gRPC face of the aggregator: the only module of the aggregator that imports
grpc. Each RPC is a thin shim over AggregatorService; domain rejections map to status
codes here and nowhere else."""

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

from flextrain.aggregator.errors import Kind, Rejected
from flextrain.aggregator.service import AggregatorService
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.wire.auth import REASON_KEY, token_matches
from flextrain.wire.frames import PUSH_READY_KEY, parse_update_chunk, serialize_chunk
from flextrain.wire.tensors import (
    MAX_MESSAGE_BYTES,
    Framed,
    Spec,
    WireFormatError,
    dtype_to_proto,
    spec_from_proto,
    spec_to_proto,
)

log = logging.getLogger("flextrain.aggregator")

STATUS: dict[Kind, grpc.StatusCode] = {
    Kind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Kind.EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Kind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
}

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class AggregatorServicer(pb_grpc.AggregatorServicer):
    def __init__(self, service: AggregatorService, token: str) -> None:
        self.service = service
        self._token = token
        self._expected: dict[int, tuple[pb.UpdateHeader, list[Spec]]] = {}
        #: Serialized ModelChunk header of each serialized prefix, while it is in use.
        self._model_headers: weakref.WeakKeyDictionary[Framed, bytes] = weakref.WeakKeyDictionary()

    def _specs(self, header: pb.UpdateHeader) -> list[Spec]:
        """The header's tensor specs. A header that lists exactly what the aggregator
        sent the client (the usual case) is recognised by one comparison of messages
        and mapped to the cached specs; anything else is converted tensor by tensor for
        the precise checks of the state."""
        client = self.service.agg.clients.get(header.client_id)
        if client is not None:
            expected = self._expected.get(client.depth)
            if expected is None:
                specs = self.service.agg.expected_spec_list(client.depth)
                expected = (pb.UpdateHeader(tensors=[spec_to_proto(x) for x in specs]), specs)
                self._expected[client.depth] = expected
            if header.tensors == expected[0].tensors:
                return expected[1]
        try:
            return [spec_from_proto(t) for t in header.tensors]
        except WireFormatError as exc:
            raise Rejected(Kind.INVALID, "malformed", str(exc)) from exc

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        if not token_matches(context.invocation_metadata(), self._token):
            exc = Rejected(Kind.UNAUTHENTICATED, "unauthenticated", "missing or wrong job token")
            self.service.reject_payload(exc)
            await self._abort(context, exc)

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Rejected) -> None:
        context.set_trailing_metadata(((REASON_KEY, exc.reason),))
        await context.abort(STATUS[exc.kind], str(exc))

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        await self._check(context)
        try:
            info = self.service.join(request.job, request.tier, request.replica_index, request.depth)
        except Rejected as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises
        spec = self.service.plan.job.spec
        data = spec.dataset
        return pb.JoinResponse(
            client_id=info.client.client_id,
            round=info.round,
            total_rounds=info.total_rounds,
            done=info.done,
            model=pb.ModelDescription(
                family=info.model.family,
                layers=info.model.layers,
                num_classes=info.model.num_classes,
                in_channels=info.model.in_channels,
                image_size=info.model.image_size,
                num_blocks=info.model.num_blocks,
                num_parameters=info.num_parameters,
                prefix_parameters=info.prefix_parameters,
                options=dict(info.model.options),
            ),
            data=pb.DataAssignment(
                dataset=data.name,
                scheme=data.partition.scheme,
                alpha=data.partition.alpha or 0.0,
                seed=data.seed,
                shard_index=info.shard_index,
                num_shards=info.num_shards,
                limit=data.limit or 0,
            ),
            training=pb.TrainingConfig(
                local_epochs=spec.training.local_epochs,
                batch_size=spec.training.batch_size,
                optimizer=spec.training.optimizer.name,
                learning_rate=spec.training.optimizer.learning_rate,
                momentum=spec.training.optimizer.momentum,
                weight_decay=spec.training.optimizer.weight_decay,
                distillation_beta=spec.training.distillation.beta,
                distillation_target=spec.training.distillation.target,
                distill=info.distill,
                wire_dtype=dtype_to_proto(self.service.agg.compression),  # type: ignore[arg-type]
            ),
        )

    async def PullModel(self, request: pb.PullModelRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelChunk | bytes]:
        await self._check(context)
        try:
            result = await self.service.pull(request.client_id, request.min_round, request.wait_seconds)
        except Rejected as exc:
            await self._abort(context, exc)
            return
        encoded = result.encoded
        if encoded is None:
            yield pb.ModelChunk(header=pb.ModelHeader(ready=result.ready, done=result.done, round=result.round))
            return
        header = self._model_headers.get(encoded)
        if header is None:  # the same for every client of this depth and round: built once
            header = pb.ModelChunk(
                header=pb.ModelHeader(
                    ready=True,
                    round=result.round,
                    tensors=[spec_to_proto(s) for s in encoded.specs],
                    total_bytes=encoded.nbytes,
                )
            ).SerializeToString()
            self._model_headers[encoded] = header
        yield header
        slots = self.service.send_slots
        assert slots is not None, "the service is started before it serves"
        order = slots.next_order()  # pulls are served in the order their data begins
        for frame in encoded.frames:
            async with slots.slot(order):  # held until gRPC has sent it (it asks for the next then)
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
                raise Rejected(Kind.INVALID, "malformed", "the first chunk of an update must be its header")
            header = first.header
            ticket = self.service.begin_push(header.client_id, header.round, header.num_examples, self._specs(header))
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
                        raise Rejected(Kind.INVALID, "malformed", "only data chunks may follow the header")
                    await push.feed(data)
                counted = await push.finish()
        except Rejected as exc:
            if exc.reason == "malformed":
                self.service.reject_payload(exc)
            await self._abort(context, exc)
            raise
        return pb.PushUpdateResponse(accepted=True, round=counted, bytes_received=push.received)

    async def GetStatus(self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext) -> pb.GetStatusResponse:
        await self._check(context)
        svc = self.service
        agg = svc.agg
        return pb.GetStatusResponse(
            job=svc.plan.name,
            round=svc.reported_rounds,
            total_rounds=agg.total_rounds,
            done=svc.reported_done,
            tiers=[pb.TierProgress(**row) for row in svc.tier_rows()],
            accuracy=[pb.DepthAccuracy(depth=d, accuracy=a, round=r) for d, (a, r) in sorted(svc.latest_accuracy().items())],
            updates_rejected=svc.rejections,
            updates_accepted=svc.accepted,
            clients_connected=len(agg.clients),
            round_started_unix=agg.round.opened_at,
            round_deadline_unix=agg.round.deadline,
        )


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
        log.info("aggregator for job %s listening on port %d", self.service.plan.name, self.port)

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
