"""A Kubernetes API emulator for the operator tests: kmock 0.8's KubernetesEmulator
with the gaps that matter to kopf, kubectl and the operator filled in.

What kmock 0.8 lacks and this subclass adds (measured, see docs/architecture notes):
- metadata.uid / resourceVersion / creationTimestamp / generation, generateName;
- 201 on create, 409 on a duplicate, 404 on a missing object, 422 when a JSON-patch
  `test` fails (kmock answers 500), 422 for an object name that is not a DNS-1123
  subdomain of at most 253 characters (Events named after long objects included);
- the status subresource: PATCH .../status changes only status, a main PATCH never does;
  generation moves only when something outside metadata/status changes;
- numeric list resourceVersions, `kind`/`apiVersion` on lists, label selectors on list
  and watch, and watches that resume from a resourceVersion instead of replaying
  every object as ADDED;
- core discovery answering `groupVersion: v1` (kmock says `/v1`);
- CustomResourceDefinitions: the CRDs in crds/ are served from the start, and a CRD
  created through the API (kubectl apply -f crds/) registers its resource;
- server-side printing: `Accept: ...;as=Table` on a resource with printer columns gets
  a meta.k8s.io/v1 Table (what `kubectl get` shows);
- the garbage collector's cascade: deleting an owner deletes its dependents (by
  ownerReferences uid), unless propagationPolicy is Orphan;
- refusals on demand (`refuse()`): a create answered with the status, reason and message
  an admission webhook, a ValidatingAdmissionPolicy or a ResourceQuota would give.

Still not emulated: schema validation and CEL, controllers (tests patch Job,
Deployment and Pod status themselves), PUT and server-side apply, namespaces.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime as dt
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import enums, rendering  # the request model and action enums

REPO = Path(__file__).resolve().parents[2]
JSON = dict[str, Any]
_TICK: Any = {"type": "TICK"}  # an internal wake-up on the buses, never sent


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_TERM = re.compile(
    r"^\s*(!?)([A-Za-z0-9._/-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$"
)


def selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Equality- and set-based label selectors (`a`, `!a`, `a=b`, `a!=b`, `a in (b,c)`)."""
    if not selector:
        return True
    terms = re.split(r",(?![^(]*\))", selector)
    for term in terms:
        m = _TERM.match(term)
        if not m:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message=f"unable to parse requirement: {term!r}"
            )
        neg, key, op, value, setop, values = m.groups()
        if op is None and setop is None:
            ok = (key in labels) != bool(neg)
        elif op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        else:
            choices = {v.strip() for v in values.split(",")}
            ok = (labels.get(key) in choices) == (setop == "in")
        if not ok:
            return False
    return True


_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _invalid_name(name: str) -> str | None:
    """Why kube-apiserver refuses an object name (every kind the tests create is named by
    a DNS-1123 subdomain of at most 253 characters), or None."""
    if len(name) > 253:
        return "must be no more than 253 bytes"
    if not _SUBDOMAIN.match(name):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((dt.datetime.now(dt.UTC) - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _jsonpath(obj: Any, path: str) -> Any:
    """The simple `.a.b` JSONPaths of printer columns."""
    for part in path.strip(".").split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator behaving closely enough to kube-apiserver for kopf and kubectl."""

    _rv: int = attrs.field(default=0, init=False)
    _printer_columns: dict[Any, list[JSON]] = attrs.field(factory=dict, init=False)
    _responses: dict[int, tuple[int, JSON]] = attrs.field(factory=dict, init=False)
    _history: dict[Any, collections.deque[tuple[int, JSON]]] = attrs.field(factory=dict, init=False)
    #: time.monotonic() of every object's creation, by (resource, namespace, name).
    created_at: dict[tuple[Any, str | None, str], float] = attrs.field(factory=dict, init=False)

    #: Namespaces the emulator reports (kmock cannot parse /api/v1/namespaces at all).
    namespaces: set[str] = attrs.field(factory=lambda: {"default", "kube-system"})

    _ticker: asyncio.Task[None] | None = attrs.field(default=None, init=False)

    #: Creates to refuse, as an admission webhook, a ValidatingAdmissionPolicy or a quota
    #: would: (plural, name) -> (status, reason, message). See `refuse()`.
    refusals: dict[tuple[str, str], tuple[int, str, str]] = attrs.field(factory=dict, init=False)
    #: How many creates of each (plural, name) were refused.
    refused: collections.Counter[tuple[str, str]] = attrs.field(
        factory=collections.Counter, init=False
    )

    def refuse(self, resource: str, name: str, status: int, reason: str, message: str) -> None:
        """Answer every create of `resource` (e.g. "batch/v1/jobs") `name` with an error."""
        self.refusals[(kmock.resource(resource).plural, name)] = (status, reason, message)

    def allow(self, resource: str, name: str) -> None:
        self.refusals.pop((kmock.resource(resource).plural, name), None)

    async def __aenter__(self) -> KubeEmulator:
        await super().__aenter__()
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await super().__aexit__(*exc)

    async def _tick(self) -> None:
        """Wake idle watch streams twice a second so they notice departed clients."""
        while True:
            await asyncio.sleep(0.5)
            for bus in list(self._buses.values()):
                await bus.put(_TICK)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.method == "GET" and raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    async def _serve_namespaces(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        items = [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": n, "uid": f"ns-{n}", "resourceVersion": "1"},
                "status": {"phase": "Active"},
            }
            for n in sorted(self.namespaces)
        ]
        if raw.query.get("watch") != "true":
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "NamespaceList",
                    "metadata": {"resourceVersion": str(self._rv)},
                    "items": items,
                }
            )
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw)  # type: ignore[arg-type]
        for item in items if not raw.query.get("resourceVersion") else []:
            await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await asyncio.sleep(float(raw.query.get("timeoutSeconds") or 3600))
        return response

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        for path in sorted((REPO / "crds").glob("*.yaml")):
            self.register_crd(yaml.safe_load(path.read_text()))

    # -- resources ------------------------------------------------------------------

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            res = kmock.resource(spec["group"], version["name"], names["plural"])
            self.resources[res] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                namespaced=spec["scope"] == "Namespaced",
                verbs={
                    "get",
                    "list",
                    "watch",
                    "create",
                    "update",
                    "patch",
                    "delete",
                    "deletecollection",
                },
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set(version.get("subresources", {})),
            )
            self._printer_columns[res] = list(version.get("additionalPrinterColumns", []))

    def _info(self, res: Any) -> kmock.ResourceInfo | None:
        # Not .get(): ResourcesArray creates an entry on any lookup of a missing key.
        return self.resources[res] if res in self.resources else None  # noqa: SIM401

    def _namespaced(self, res: Any) -> bool:
        info = self._info(res)
        return bool(info and info.namespaced)

    def _api_version(self, res: Any) -> str:
        return res.version if not res.group else f"{res.group}/{res.version}"

    # -- discovery fix ----------------------------------------------------------------

    async def _serve_version(self, request: rendering.Request) -> Any:
        doc = await super()._serve_version(request)
        if isinstance(doc, dict) and str(doc.get("groupVersion", "")).startswith("/"):
            doc["groupVersion"] = doc["groupVersion"][1:]
        for entry in doc.get("resources", []) if isinstance(doc, dict) else []:
            if "/" in entry["name"]:  # subresources carry no names of their own
                entry.update(
                    shortNames=[], categories=[], singularName="", verbs=["get", "patch", "update"]
                )
        return doc

    async def _serve_server_version(self, request: rendering.Request) -> Any:
        doc = await super()._serve_server_version(request)
        doc.update(minor="37", gitVersion="v1.37.0-emulated", platform="linux/amd64")
        return doc

    # -- state changes ------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _publish(self, res: Any, type_: str, body: JSON) -> None:
        rv = int(body.get("metadata", {}).get("resourceVersion") or self._rv)
        history = self._history.setdefault(res, collections.deque(maxlen=20000))
        event = {"type": type_, "object": copy.deepcopy(body)}
        history.append((rv, event))
        await self._buses[res].put(event)

    async def _handle(self, request: rendering.Request) -> Any:
        res = request.resource
        if res is None or not res.plural or request.action is None:
            # Discovery and anything else: kmock's reactions.
            return await kmock.RawHandler._handle(self, request)
        if request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE):
            async with self._lock:
                if request.action == enums.action.CREATE:
                    await self._create(request)
                elif request.action == enums.action.UPDATE:
                    await self._update(request)
                else:
                    await self._delete(request)
        # Object requests are served directly: kmock matches each request against every
        # request it has seen before (quadratic), which a 50-job benchmark cannot afford.
        serve = {
            enums.action.LIST: self._serve_list,
            enums.action.WATCH: self._serve_watch,
            enums.action.FETCH: self._serve_fetch,
            enums.action.CREATE: self._serve_create,
            enums.action.UPDATE: self._serve_update,
            enums.action.DELETE: self._serve_delete,
        }[request.action]
        payload = serve(request)
        if not hasattr(payload, "__aiter__"):
            payload = await payload
        if not isinstance(payload, kmock.Response):
            payload = kmock.Response(payload=payload)
        return await payload(request)

    def _key(self, res: Any, namespace: str | None, name: str) -> tuple[Any, str | None, str]:
        return (res, namespace if self._namespaced(res) else None, name)

    def _live(self, key: Any) -> kmock.Object | None:
        if key in self._objects and not self._objects[key].deleted:
            return self._objects[key]
        return None

    async def _create(self, request: rendering.Request) -> None:
        res = request.resource
        if self._info(res) is None and not any(r == res for r, _, _ in self._objects):
            raise kmock.KubernetesResourceNotFoundError()
        body = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise kmock.KubernetesError(
                status=422, reason="Invalid", message="metadata.name: Required value"
            )
        refusal = self.refusals.get((res.plural, meta["name"]))
        if refusal is not None:
            self.refused[(res.plural, meta["name"])] += 1
            status, reason, message = refusal
            raise kmock.KubernetesError(status=status, reason=reason, message=message)
        if problem := _invalid_name(meta["name"]):
            kind = (self._info(res).kind if self._info(res) else None) or res.plural
            raise kmock.KubernetesError(
                status=422,
                reason="Invalid",
                message=f'{kind} "{meta["name"]}" is invalid: metadata.name: Invalid value: '
                f'"{meta["name"]}": {problem}',
            )
        if self._namespaced(res):
            meta["namespace"] = request.namespace or meta.get("namespace") or "default"
        key = self._key(res, meta.get("namespace"), meta["name"])
        if self._live(key) is not None:
            raise kmock.KubernetesError(
                status=409,
                reason="AlreadyExists",
                message=f'{res.plural} "{meta["name"]}" already exists',
            )
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=_now(),
            generation=1,
        )
        if key in self._objects:
            self._objects[key].create(body)
        else:
            self._objects[key] = body
        self._responses[request.id] = (201, body)
        self.created_at[key] = time.monotonic()
        await self._publish(res, "ADDED", body)
        if res.group == "apiextensions.k8s.io" and res.plural == "customresourcedefinitions":
            self.register_crd(body)

    async def _update(self, request: rendering.Request) -> None:
        res = request.resource
        key = self._key(res, request.namespace, request.name or "")
        obj = self._live(key)
        if obj is None:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message=f'{res.plural} "{request.name}" not found'
            )
        old = copy.deepcopy(obj.raw)
        patch = request.data
        if isinstance(patch, list):
            try:
                new = jsonpatch.apply_patch(old, patch, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message=str(exc)
                ) from None
        else:
            new = merge_patch(old, patch or {})
        info = self._info(res)
        has_status = bool(info and "status" in info.subresources)
        if request.subresource == "status":
            new = (
                {**old, "status": new.get("status")}
                if "status" in new
                else {k: v for k, v in old.items() if k != "status"}
            )
        elif has_status:
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = old["status"]
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
            if fixed in old.get("metadata", {}):
                meta[fixed] = old["metadata"][fixed]
        body_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }
        if body_changed:
            meta["generation"] = int(old.get("metadata", {}).get("generation") or 1) + 1
        if new == old:
            self._responses[request.id] = (200, old)
            return
        meta["resourceVersion"] = self._next_rv()
        obj.history.append(new)
        self._responses[request.id] = (200, new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._finalize(key, new)
        else:
            await self._publish(res, "MODIFIED", new)

    async def _delete(self, request: rendering.Request) -> None:
        res = request.resource
        key = self._key(res, request.namespace, request.name or "")
        obj = self._live(key)
        if obj is None:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message=f'{res.plural} "{request.name}" not found'
            )
        body = copy.deepcopy(obj.raw)
        options = request.data if isinstance(request.data, dict) else {}
        orphan = (
            options.get("propagationPolicy") == "Orphan"
            or request.params.get("propagationPolicy") == "Orphan"
        )
        meta = body["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_rv()
                obj.history.append(body)
                await self._publish(res, "MODIFIED", body)
            self._responses[request.id] = (202, body)
            return
        self._responses[request.id] = (200, body)
        await self._finalize(key, body, orphan=orphan)

    async def _finalize(self, key: Any, body: JSON, *, orphan: bool = False) -> None:
        """Remove an object for good, then its dependents (the garbage collector)."""
        res = key[0]
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key].delete()
        await self._publish(res, "DELETED", body)
        if orphan:
            return
        uid = body["metadata"].get("uid")
        for other_key, other in list(self._objects.items()):
            if other.deleted:
                continue
            refs = other.raw.get("metadata", {}).get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                dependent = copy.deepcopy(other.raw)
                if dependent["metadata"].get("finalizers"):
                    if not dependent["metadata"].get("deletionTimestamp"):
                        dependent["metadata"]["deletionTimestamp"] = _now()
                        dependent["metadata"]["resourceVersion"] = self._next_rv()
                        other.history.append(dependent)
                        await self._publish(other_key[0], "MODIFIED", dependent)
                else:
                    await self._finalize(other_key, dependent)

    # -- reads -----------------------------------------------------------------------

    def _items(self, request: rendering.Request) -> list[JSON]:
        selector = request.params.get("labelSelector")
        out = []
        for (res, namespace, _), obj in self._objects.items():
            if res != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            raw = obj.raw
            if selector_matches(selector, raw.get("metadata", {}).get("labels") or {}):
                out.append(copy.deepcopy(raw))
        return sorted(
            out, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"])
        )

    def _wants_table(self, request: rendering.Request) -> bool:
        accept = request.headers.get("Accept", "") or request.headers.get("accept", "")
        return "as=Table" in accept and bool(self._printer_columns.get(request.resource))

    def _table(self, request: rendering.Request, items: Iterable[JSON]) -> JSON:
        columns = self._printer_columns[request.resource]
        definitions = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "priority": 0,
                "description": "Name of the object",
            }
        ]
        definitions += [
            {
                "name": c["name"],
                "type": c["type"],
                "format": c.get("format", ""),
                "priority": c.get("priority", 0),
                "description": c.get("description", ""),
            }
            for c in columns
        ]
        rows = []
        for item in items:
            cells: list[Any] = [item["metadata"]["name"]]
            for c in columns:
                value = _jsonpath(item, c["jsonPath"])
                if c["type"] == "date":
                    value = _age(value)
                cells.append(value)
            meta = {k: v for k, v in item["metadata"].items() if k != "managedFields"}
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta,
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "columnDefinitions": definitions,
            "rows": rows,
        }

    async def _serve_list(self, request: rendering.Request) -> Any:
        if self._info(request.resource) is None and not any(
            r == request.resource for r, _, _ in self._objects
        ):
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._items(request)
            if self._wants_table(request):
                return self._table(request, items)
            info = self._info(request.resource)
            kind = (info.kind if info and info.kind else request.resource.plural) + "List"
            return {
                "apiVersion": self._api_version(request.resource),
                "kind": kind,
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        async with self._lock:
            obj = self._live(self._key(request.resource, request.namespace, request.name or ""))
            if obj is None:
                raise kmock.KubernetesError(
                    status=404,
                    reason="NotFound",
                    message=f'{request.resource.plural} "{request.name}" not found',
                )
            raw = copy.deepcopy(obj.raw)
        if self._wants_table(request):
            return self._table(request, [raw])
        return raw

    def _stored_response(self, request: rendering.Request) -> Any:
        # Always an explicit status: kmock keeps the last one set on the shared reaction.
        status, body = self._responses.pop(request.id, (200, {}))
        return kmock.Response(status=status, payload=body)

    async def _serve_create(self, request: rendering.Request) -> Any:
        return self._stored_response(request)

    async def _serve_update(self, request: rendering.Request) -> Any:
        return self._stored_response(request)

    async def _serve_delete(self, request: rendering.Request) -> Any:
        return self._stored_response(request)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        yield b""
        res = request.resource
        selector = request.params.get("labelSelector")
        since = request.params.get("resourceVersion", "")
        async with self._lock:
            marker = await self._buses[res].mark()
            history = self._history.get(res, collections.deque())
            start = int(since) if since.isdigit() else None
            if start is not None and (
                not history or history[0][0] <= start + 1 or start >= self._rv
            ):
                backlog = [e for rv, e in history if rv > start]
            else:  # no (usable) resourceVersion: the current state as ADDED, like a fresh list
                backlog = [{"type": "ADDED", "object": o} for o in self._items(request)]
        try:
            for event in backlog:
                if self._event_matches(request, event, selector):
                    yield event
            async for event in self._buses[res].stream(since=marker):
                if event is _TICK:
                    # aiohttp does not cancel handlers when clients leave: notice it here.
                    transport = request._raw_request.transport if request._raw_request else None
                    if transport is None or transport.is_closing():
                        return
                    continue
                if self._event_matches(request, event, selector):
                    yield event
        finally:
            await self._buses[res].unmark(marker)

    def _event_matches(self, request: rendering.Request, event: JSON, selector: str | None) -> bool:
        meta = event.get("object", {}).get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        return selector_matches(selector, meta.get("labels") or {})

    # -- helpers for tests ---------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> JSON | None:
        res = kmock.resource(resource)
        obj = self._live(self._key(res, namespace, name))
        return copy.deepcopy(obj.raw) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> list[JSON]:
        res = kmock.resource(resource)
        return sorted(
            (
                copy.deepcopy(o.raw)
                for (r, ns, _), o in self._objects.items()
                if r == res and not o.deleted and (namespace is None or ns == namespace)
            ),
            key=lambda o: o["metadata"]["name"],
        )

    def count_requests(
        self, method: str | None = None, path: str | re.Pattern[str] | None = None
    ) -> int:
        total = 0
        for req in self._requests:
            if (
                method
                and str(req.method.value if hasattr(req.method, "value") else req.method).upper()
                != method.upper()
            ):
                continue
            if path is not None:
                text = str(req.url.path)
                if isinstance(path, re.Pattern) and not path.search(text):
                    continue
                if isinstance(path, str) and path not in text:
                    continue
            total += 1
        return total


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
