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
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flextrain.aggregator.errors import Rejected
from flextrain.aggregator.service import AggregatorService
from flextrain.aggregator.state import client_id_for
from flextrain.contract.credentials import CredentialVerifier, ReplicaIdentity
from flextrain.contract.refusals import Reason
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.wire.auth import REASON_KEY, replica_credential_of, token_matches
from flextrain.wire.frames import (
    PUSH_READY_KEY,
    Undecodable,
    decode_message,
    parse_update_chunk,
    serialize_chunk,
)
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

M = TypeVar("M")

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
        self._credentials = CredentialVerifier(token, service.name, service.tier_names)
        #: Decodes update headers; each depth's expected list is recognised at once.
        self._specs = SpecDecoder()
        #: Serialized ModelChunk header of each serialized prefix, while it is in use.
        self._model_headers: weakref.WeakKeyDictionary[Framed, bytes] = weakref.WeakKeyDictionary()

    def _update_header(self, message: pb.UpdateHeader) -> UpdateHeader:
        expected = self.service.expected_update(message.client_id)
        if expected is None:  # refused by the header check: no need to read its tensors
            return UpdateHeader(message.client_id, message.round, message.num_examples, [], 0.0, 0.0)
        key, specs = expected
        listed, most = len(message.tensors), self.service.model_tensors
        if listed > most:  # bounded before any tensor is converted
            raise self.service.refusal(
                Reason.MALFORMED, f"the update header lists {listed} tensors; the model has {most}"
            )
        if not self._specs.knows(key):
            self._specs.know(key, specs)
        try:
            return update_header_from_proto(message, self._specs, key)
        except WireFormatError as exc:
            raise self.service.refusal(Reason.MALFORMED, str(exc)) from exc

    def _decoded(self, message: M | Undecodable) -> M:
        """A request message, or the `malformed` refusal of one that did not decode."""
        if isinstance(message, Undecodable):
            raise self.service.refusal(Reason.MALFORMED, f"the request is {message.what}")
        return message

    async def _check(self, context: grpc.aio.ServicerContext) -> ReplicaIdentity | None:
        """Authenticate the call from its metadata alone (before its request is decoded):
        the replica a valid replica credential vouches for, or None for the job token."""
        received = context.invocation_metadata()
        credential = replica_credential_of(received)
        if credential is not None:
            identity = self._credentials.verify(credential)
            if identity is None:
                await self._abort(
                    context, self.service.refusal(Reason.UNAUTHENTICATED, "the replica credential does not verify for this job")
                )
            return identity
        if not token_matches(received, self._token):
            await self._abort(
                context, self.service.refusal(Reason.UNAUTHENTICATED, "missing or wrong job token or replica credential")
            )
        return None

    def _as_replica(self, identity: ReplicaIdentity | None, tier: str, replica: int, depth: int | None = None) -> None:
        """Refuse a training call that the caller's credential does not vouch for: made
        with the job token, or naming another tier, replica or depth."""
        if identity is None:
            raise self.service.refusal(
                Reason.WRONG_IDENTITY,
                "the job token authenticates GetStatus only; a trainer calls with its replica credential "
                "(made from its tier's key, FLEXTRAIN_TIER_KEY)",
            )
        if (identity.tier, identity.index) != (tier, replica) or depth not in (None, identity.depth):
            named = f"tier {tier!r} replica {replica}" + (f" depth {depth}" if depth is not None else "")
            raise self.service.refusal(
                Reason.WRONG_IDENTITY,
                f"the credential is tier {identity.tier!r} replica {identity.index} depth {identity.depth}; the call names {named}",
            )

    def _as_client(self, identity: ReplicaIdentity | None, client_id: str) -> None:
        """As `_as_replica`, for a call that names its client id."""
        own = None if identity is None else client_id_for(identity.tier, identity.index)
        if own is None:
            self._as_replica(None, "", 0)  # raises: the job token does not train
        elif client_id != own:
            raise self.service.refusal(
                Reason.WRONG_IDENTITY, f"the credential is client {own!r}; the call names client {client_id!r}"
            )

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Rejected) -> None:
        context.set_trailing_metadata(((REASON_KEY, exc.reason.value),))
        await context.abort(STATUS[exc.reason], str(exc))

    async def Join(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        identity = await self._check(context)
        try:
            r = join_request_from_proto(self._decoded(decode_message(pb.JoinRequest, request)))
            self._as_replica(identity, r.tier, r.replica_index, r.depth)
            joined = self.service.join(r.job, r.tier, r.replica_index, r.depth)
        except Rejected as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises
        return joined_to_proto(joined)

    async def PullModel(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelChunk | bytes]:
        identity = await self._check(context)
        try:
            r = pull_request_from_proto(self._decoded(decode_message(pb.PullModelRequest, request)))
            self._as_client(identity, r.client_id)
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

    async def PushUpdate(
        self, request_iterator: AsyncIterator[pb.UpdateChunk | memoryview | Undecodable], context: grpc.aio.ServicerContext
    ) -> pb.PushUpdateResponse:
        identity = await self._check(context)  # before a byte of the stream is decoded
        stream = request_iterator.__aiter__()
        try:
            first = await self._first_chunk(stream)
            if first is None or isinstance(first, memoryview) or first.WhichOneof("chunk") != "header":
                raise self.service.refusal(Reason.MALFORMED, "the first chunk of an update must be its header")
            self._as_client(identity, first.header.client_id)
            header = self._update_header(first.header)
            ticket = self.service.begin_push(header.client_id, header.round, header.num_examples, header.specs)
            # The client sends its data once told to (it waits for this, so pushes
            # waiting their turn hold no data here).
            send = partial(context.send_initial_metadata, ((PUSH_READY_KEY, "1"),))
            async with self.service.receive_push(ticket, send) as push:
                async for chunk in push.paced(stream):
                    if isinstance(chunk, memoryview):
                        data: bytes | memoryview = chunk  # framed data chunk (the usual case)
                    else:
                        message: pb.UpdateChunk = self._decoded(chunk)
                        if message.WhichOneof("chunk") != "data":
                            raise self.service.refusal(Reason.MALFORMED, "only data chunks may follow the header")
                        data = message.data
                    await push.feed(data)
                counted = await push.finish()
        except Rejected as exc:
            await self._abort(context, exc)
            raise
        return push_result_to_proto(PushResult(accepted=True, round=counted, bytes_received=push.received))

    async def _first_chunk(
        self, stream: AsyncIterator[pb.UpdateChunk | memoryview | Undecodable]
    ) -> pb.UpdateChunk | memoryview | None:
        """The push's first chunk (None when the stream ends first), waited for at most
        the idle timeout; a chunk that did not decode is refused."""
        idle = self.service.push_timeouts.idle_seconds
        try:
            first = await asyncio.wait_for(anext(stream), idle)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise self.service.refusal(Reason.PUSH_TIMEOUT, f"the push sent no header within {idle:g} s") from None
        return self._decoded(first)

    async def GetStatus(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.GetStatusResponse:
        await self._check(context)
        try:
            self._decoded(decode_message(pb.GetStatusRequest, request))
        except Rejected as exc:
            await self._abort(context, exc)
            raise
        return status_to_proto(self.service.status())


def add_servicer(servicer: AggregatorServicer, server: grpc.aio.Server) -> None:
    """Register the service as the generated ``add_AggregatorServicer_to_server`` does,
    except that the model and update chunk streams use the hand-framed data chunks of
    flextrain.wire.frames (same bytes on the wire, fewer copies), and that requests are
    decoded by the handlers, after the token check, into a ``malformed`` refusal when
    they do not decode (a raising deserializer answers UNKNOWN and logs a traceback)."""
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.Join,
            request_deserializer=None,  # bytes: decoded after the token check
            response_serializer=pb.JoinResponse.SerializeToString,
        ),
        "PullModel": grpc.unary_stream_rpc_method_handler(
            servicer.PullModel,
            request_deserializer=None,
            response_serializer=serialize_chunk,
        ),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.PushUpdate,
            request_deserializer=parse_update_chunk,
            response_serializer=pb.PushUpdateResponse.SerializeToString,
        ),
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetStatus,
            request_deserializer=None,
            response_serializer=pb.GetStatusResponse.SerializeToString,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["Aggregator"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


@dataclass
class TlsFiles:
    """Server certificate and key, and optionally a CA to require client certificates.

    The files are read again at the first TLS handshake after either of them changed
    (their modification time or inode): a renewed certificate (the operator's, or
    cert-manager's, written into the mounted Secret by the kubelet) is served to new
    connections without a restart; connections open already keep theirs."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in (self.cert, self.key):
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def _configuration(self) -> Any:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())], root_certificates=ca
        )

    def credentials(self) -> grpc.ServerCredentials:
        stamp = [self._stamp()]
        initial = self._configuration()

        def fetch() -> Any:
            """Called by gRPC before each handshake: None keeps the current files."""
            try:
                now = self._stamp()
                if now == stamp[0]:
                    return None
                configuration = self._configuration()
            except OSError as exc:  # in the middle of a change: the next handshake retries
                log.warning("could not read the new TLS certificate: %s", exc)
                return None
            stamp[0] = now
            log.info("serving the renewed TLS certificate %s", self.cert)
            return configuration

        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=self.client_ca is not None
        )


class AggregatorServer:
    """The running gRPC server: servicer + health service + graceful stop. With
    `health_port`, the health service alone is also served in plaintext there (the
    kubelet's gRPC probes cannot speak TLS); nothing else answers on that port."""

    def __init__(
        self,
        service: AggregatorService,
        token: str,
        *,
        host: str = "0.0.0.0",
        port: int = 50051,
        tls: TlsFiles | None = None,
        health_port: int = 0,
    ) -> None:
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
        self.health_server: grpc.aio.Server | None = None
        if health_port:
            self.health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            if self.health_server.add_insecure_port(f"{host}:{health_port}") == 0:
                raise OSError(f"cannot listen on {host}:{health_port} (health): the port is in use or not allowed")

    async def start(self) -> None:
        await self.service.start()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        await self._set_health(True)
        log.info("aggregator for job %s listening on port %d", self.service.name, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        await self._set_health(False)
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.service.stop()

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", "flextrain.v1.Aggregator"):
            result: Any = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

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
