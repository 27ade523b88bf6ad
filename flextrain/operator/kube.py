"""The operator's only Kubernetes API I/O: a small aiohttp client over plain dicts, and
the application of a reconcile Plan.

Why not the kubernetes client: it is synchronous (every call would hold a thread), turns
every object into generated models, and costs memory the operator's budget does not
have: importing it adds 35 MiB of resident memory and 0.2 s (measured with Python 3.11 on
the development machine), while aiohttp is already loaded by kopf. The operator needs six
verbs on dicts. The client stays a development dependency: the tests and benchmarks drive
the control plane with it. The
credentials come from kopf's login (service account in a pod, else kubeconfig), handed
over by handlers.py, so the operator and kopf always talk to the same API server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import heapq
import itertools
import json
import os
import ssl
import tempfile
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Final

import aiohttp

from flextrain.api.common import API_VERSION
from flextrain.operator import names

JSON = dict[str, Any]
KUEUE_API_VERSION: Final[str] = names.KUEUE_API_VERSION

#: (apiVersion, kind) -> (plural, namespaced) of every kind the operator touches.
KINDS: Final[dict[tuple[str, str], tuple[str, bool]]] = {
    ("v1", "Secret"): ("secrets", True),
    ("v1", "Service"): ("services", True),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("v1", "Event"): ("events", True),
    ("v1", "Pod"): ("pods", True),
    ("v1", "Node"): ("nodes", False),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("cert-manager.io/v1", "Certificate"): ("certificates", True),
    (API_VERSION, "FlexTrainJob"): ("flextrainjobs", True),
    (API_VERSION, "DeviceTier"): ("devicetiers", False),
    ("coordination.k8s.io/v1", "Lease"): ("leases", True),
    (KUEUE_API_VERSION, "Workload"): ("workloads", True),
    (KUEUE_API_VERSION, "ResourceFlavor"): ("resourceflavors", False),
}
COMPONENT: Final[str] = "flextrain-operator"
#: Connections kept to the API server. Each TLS connection holds a 256 KiB receive buffer;
#: a burst of job creations queues behind these (in lanes, below) instead of opening one
#: per pass in flight. Measured with 50 jobs created at once on 2 cores: 32 brought the
#: median job's children from 0.93 to 0.77 s (the API server completes 250-270 creates/s
#: either way) but 8 MiB more, which the operator's 150 MB budget at 50 jobs does not have
#: since every job's status is read over TLS.
CONNECTIONS: Final[int] = 16


class Lane(IntEnum):
    """Which requests go first when all connections are busy (a burst of new jobs): what
    a job needs to run before what reports on it. Measured with 50 jobs created at once:
    in arrival order, a job's second round of creates (its workloads, after its Secret)
    queued behind every other job's first one and their status writes and Events."""

    CREATE = 0  # a child, or the lookup a create needs
    CHANGE = 1  # patches and deletes of children and jobs
    STATUS = 2  # status subresources
    EVENT = 3


#: The order of the job a request is for (the runtime sets it per pass, so a child task
#: inherits it): within a lane, earlier jobs first, so a burst completes job after job
#: instead of every job a little.
ORDER: contextvars.ContextVar[int] = contextvars.ContextVar("flextrain_request_order", default=0)


class _Gate:
    """At most `slots` requests in flight; the others wait and are let in by (lane, job
    order, arrival)."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    async def acquire(self, lane: Lane) -> None:
        # A free slot means no one waits: release() hands a slot to a waiter first.
        if self._free > 0:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (int(lane), ORDER.get(), next(self._arrival), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # let in, but cancelled before it could use the slot
            raise

    def release(self) -> None:
        while self._waiting:
            *_, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


class KubeError(Exception):
    """The API server refused a request; `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.reason = reason
        #: The API server's own words (the Status object's message).
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: the object exists already (create) or changed meanwhile."""


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate (from kopf's ConnectionInfo)."""

    server: str
    ca_path: str | None = None
    ca_data: str | bytes | None = None
    insecure: bool = False
    scheme: str | None = None
    token: str | None = None
    certificate_path: str | None = None
    certificate_data: str | bytes | None = None
    private_key_path: str | None = None
    private_key_data: str | bytes | None = None


def url_of(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The API path of a kind, object or subresource."""
    try:
        plural, namespaced = KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not handle {api_version} {kind}") from None
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{root}/namespaces/{namespace}/{plural}" if namespaced else f"{root}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _pem(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    # kubeconfig *-data fields are base64 of the PEM text
    return raw if raw.lstrip().startswith(b"-----") else base64.b64decode(raw)


def ssl_context(creds: Credentials) -> ssl.SSLContext | bool:
    if not creds.server.startswith("https"):
        return False
    if creds.insecure:
        return False
    ctx = ssl.create_default_context(cafile=creds.ca_path)
    if creds.ca_data:
        ctx.load_verify_locations(cadata=_pem(creds.ca_data).decode())
    cert, key = creds.certificate_path, creds.private_key_path
    cleanup: list[str] = []
    try:
        if creds.certificate_data:
            cert = _temp_file(_pem(creds.certificate_data), cleanup)
        if creds.private_key_data:
            key = _temp_file(_pem(creds.private_key_data), cleanup)
        if cert:
            ctx.load_cert_chain(cert, key)
    finally:
        for path in cleanup:  # loaded into the context; the files are no longer needed
            with contextlib.suppress(OSError):
                os.unlink(path)
    return ctx


def _temp_file(data: bytes, cleanup: list[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="flextrain-", suffix=".pem")
    cleanup.append(path)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


class KubeClient:
    """Create, get, patch and delete objects as dicts; post Events. Counts requests per
    verb (`requests`) so benchmarks can report API traffic."""

    def __init__(self, credentials: Credentials | None = None, *, timeout: float = 30.0) -> None:
        self._credentials = credentials
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self.requests: Counter[str] = Counter()
        #: (method, HTTP status; 0: no answer) -> requests, for the operator's metrics.
        self.responses: Counter[tuple[str, int]] = Counter()
        self._closing: set[asyncio.Task[None]] = set()
        self._gate = _Gate(CONNECTIONS)
        #: Why this client may no longer write (leadership lost); None: it may.
        self.fenced: str | None = None

    def fence(self, reason: str) -> None:
        """Refuse every request but GET from now on (a leader that lost its Lease must not
        write, even from a pass that is half-way through)."""
        self.fenced = reason

    def set_credentials(self, credentials: Credentials) -> None:
        """New credentials (kopf re-logged in); the next request uses them."""
        if credentials != self._credentials:
            self._credentials = credentials
            old, self._session = self._session, None
            if old is not None:
                self._closing.add(asyncio.get_running_loop().create_task(old.close()))

    @property
    def ready(self) -> bool:
        return self._credentials is not None

    async def _get_session(self) -> tuple[aiohttp.ClientSession, Credentials]:
        creds = self._credentials
        if creds is None:
            raise KubeError(0, "no credentials yet (kopf has not logged in)")
        async with self._lock:
            if self._session is None or self._session.closed:
                headers = {"User-Agent": f"{COMPONENT}/{_version()}"}
                if creds.token:
                    headers["Authorization"] = f"{creds.scheme or 'Bearer'} {creds.token}"
                self._session = aiohttp.ClientSession(
                    headers=headers,
                    connector=aiohttp.TCPConnector(ssl=ssl_context(creds), limit=CONNECTIONS),
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                )
            return self._session, creds

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        lane: Lane = Lane.CHANGE,
    ) -> JSON:
        if self.fenced is not None and method != "GET":
            raise KubeError(0, f"{method} {path} not sent: {self.fenced}")
        session, creds = await self._get_session()
        self.requests[method] += 1
        url = creds.server.rstrip("/") + path
        data = None if body is None else json.dumps(body)
        await self._gate.acquire(lane)
        try:
            async with session.request(
                method,
                url,
                data=data,
                params=params,
                headers={"Content-Type": content_type} if data is not None else None,
            ) as resp:
                text = await resp.text()
                self.responses[(method, resp.status)] += 1
                if resp.status >= 400:
                    raise _error(resp.status, text)
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.responses[(method, 0)] += 1
            raise KubeError(0, f"{method} {path}: {exc.__class__.__name__}: {exc}") from None
        finally:
            self._gate.release()

    # -- verbs ---------------------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> JSON:
        meta = obj.get("metadata") or {}
        path = url_of(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return await self.request("POST", path, body=obj, lane=Lane.CREATE)

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> JSON | None:
        try:
            return await self.request("GET", url_of(api_version, kind, namespace, name), lane=Lane.CREATE)
        except NotFound:
            return None

    async def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> JSON:
        """A JSON merge patch (RFC 7386): maps merge, lists and scalars replace, null deletes."""
        path = url_of(api_version, kind, namespace, name, subresource)
        return await self.request(
            "PATCH",
            path,
            body=body,
            content_type="application/merge-patch+json",
            lane=Lane.STATUS if subresource == "status" else Lane.CHANGE,
        )

    async def replace(self, obj: Mapping[str, Any]) -> JSON:
        """PUT the whole object. With `metadata.resourceVersion` set, the API server refuses
        it (409, `Conflict`) when the object changed since that version was read."""
        meta = obj.get("metadata") or {}
        path = url_of(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        return await self.request("PUT", path, body=obj)

    async def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        *,
        propagation: str = "Background",
    ) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        with contextlib.suppress(NotFound):
            await self.request("DELETE", url_of(api_version, kind, namespace, name), body=body)

    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        *,
        namespace: str | None = None,
    ) -> None:
        """A core/v1 Event about `involved` (an object with apiVersion, kind, metadata)."""
        meta = involved.get("metadata") or {}
        ns = namespace or meta.get("namespace") or "default"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = meta.get("name", "object")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": names.event_name(name, uuid.uuid4().hex[:16]), "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": name,
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request("POST", url_of("v1", "Event", ns), body=event, lane=Lane.EVENT)


def _error(status: int, text: str) -> KubeError:
    reason, message = "", text[:500]
    with contextlib.suppress(ValueError, AttributeError):
        doc = json.loads(text)
        reason, message = str(doc.get("reason", "")), str(doc.get("message", message))[:500]
    if status == 404:
        return NotFound(status, message, reason)
    if status == 409:
        return Conflict(status, message, reason)
    return KubeError(status, message, reason)


def _version() -> str:
    from flextrain import __version__

    return __version__


def status_patch(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> JSON:
    """The merge patch turning status `before` into `after` (keys that went away become
    null). Empty when nothing changed."""
    before = before or {}
    patch: JSON = {k: v for k, v in after.items() if before.get(k) != v}
    for key in before:
        if key not in after and key != "kopf":
            patch[key] = None
    return patch
