"""The operator's running state and one reconcile pass, without kopf.

handlers.py (the only kopf module) feeds this with what kopf watches and indexes; a
pass reads the job, gathers what is observed about its children, asks the aggregator
for its status when due, calls the pure reconcile() and applies the Plan through
kube.py:

1. a missing Secret is created first and reconcile() asked again: the aggregator and
   the trainers read the Secret's token (and, with TLS, the job's certificates, issued
   here in memory for a new Secret: flextrain.operator.certs), so they are planned only
   once the job owns it (the Service, which reads no token, is created meanwhile);
2. the other missing children are created concurrently; a create the API server refuses
   is remembered with its error and retried with backoff (`backoff_delay`: 1 s doubling
   to 60 s; at once when the object to create changes);
3. reconcile() is asked once more with what now exists and what was refused, so the
   status and the Events (a Warning per new refusal) say what the pass achieved;
4. its patches, Events and status (only when it changed) are written.

A request that fails otherwise (a patch, the status) fails the pass; handlers.py logs it
and retries with the same backoff.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from flextrain import backoff
from flextrain.api.common import API_VERSION
from flextrain.api.conditions import JobReason
from flextrain.api.devicetier import KIND as KIND_TIER
from flextrain.api.devicetier import DeviceTier, DeviceTierStatus
from flextrain.api.flextrainjob import KIND, FlexTrainJob, FlexTrainJobStatus
from flextrain.api.validation import object_problems
from flextrain.operator import builders, certs, names, observed
from flextrain.operator.config import OperatorSettings
from flextrain.operator.kube import ORDER, Conflict, KubeClient, KubeError, status_patch
from flextrain.operator.plan import AggregatorReading, CreateFailure, Event, Plan
from flextrain.operator.reconcile import invalid_spec_status, reconcile
from flextrain.operator.tiers import NodeInfo, device_tier_status
from flextrain.wire.auth import new_token
from flextrain.wire.status import StatusClient, StatusUnavailable

log = logging.getLogger("flextrain.operator")
#: Backoff of refused creates and failed passes: 1 s, doubling, at most 60 s.
BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0
#: Passes that plan and create children at the same time (the aggregator is read before
#: and the status written after, outside this limit). Twice the API connections
#: (kube.CONNECTIONS): enough to keep them busy, while a burst of 500 new jobs does not
#: hold 500 sets of planned children at once.
PASSES_AT_ONCE = 32
Key = tuple[str, str]  # (namespace, flextrain.dev/job label value)


def job_key(namespace: str, name: str) -> Key:
    return (namespace, names.label_value(name))


@dataclass(frozen=True)
class InvalidDeviceTier:
    """A DeviceTier that exists but does not read into the typed model: it breaks the
    CRD's rules (created before a rule was added, or on an API server without CEL) or the
    rules the model adds. Jobs on it wait and say why, naming the fields."""

    name: str
    problems: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.problems)


def parse_device_tier(body: Mapping[str, Any]) -> DeviceTier | InvalidDeviceTier:
    """A DeviceTier from its object, or what is wrong with it."""
    meta = dict(body.get("metadata") or {})
    raw = {"kind": KIND_TIER, "metadata": meta, "spec": dict(body.get("spec") or {})}
    try:
        tier = DeviceTier.model_validate(raw)
    except ValidationError as exc:
        problems = tuple(object_problems(raw, exc))
        log.warning("DeviceTier %s is invalid: %s", meta.get("name"), "; ".join(problems))
        return InvalidDeviceTier(str(meta.get("name", "")), problems)
    try:
        status = DeviceTierStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        status = None
    return tier.model_copy(update={"status": status})


def parse_status(body: Mapping[str, Any]) -> FlexTrainJobStatus | None:
    raw = {k: v for k, v in dict(body.get("status") or {}).items() if k != "kopf"}
    try:
        return FlexTrainJobStatus.model_validate(raw)
    except ValidationError:
        return None


@dataclass(frozen=True)
class Snapshot:
    """What the caches hold about one job's world at the start of a pass."""

    device_tiers: Mapping[str, DeviceTier]
    nodes: Sequence[NodeInfo]
    #: DeviceTiers that exist but are invalid, by name.
    invalid_tiers: Mapping[str, InvalidDeviceTier] = field(default_factory=dict)
    tier_jobs: Sequence[observed.TierJobState] = ()
    aggregators: Sequence[observed.AggregatorState] = ()
    services: Sequence[observed.ChildState] = ()
    network_policies: Sequence[observed.ChildState] = ()
    disruption_budgets: Sequence[observed.ChildState] = ()
    checkpoint_claims: Sequence[observed.ClaimState] = ()
    pods: Sequence[observed.PodState] = ()
    #: The job's Kueue Workload (watched only with the Kueue integration on).
    workloads: Sequence[observed.WorkloadState] = ()


@dataclass(frozen=True)
class _Refusal:
    """A refused create: why, what was refused, how often, and when to try again."""

    failure: CreateFailure
    digest: str
    attempts: int
    #: time.monotonic() before which the same object is not sent again.
    retry_at: float


@dataclass
class _JobMemory:
    """What a job's daemon remembers between passes."""

    token: str | None = None
    #: The job's CA and the aggregator's serving certificate (TLS jobs), as in its Secret.
    certs: certs.Certificates | None = None
    secret: observed.ChildState | None = None
    #: cert-manager: the job's Certificate once created (or found) by this operator, the
    #: `ca.crt` cert-manager wrote for it, and when that was read (time.monotonic()).
    certificate: observed.ChildState | None = None
    issued_ca: str | None = None
    issued_ca_read_at: float = 0.0
    #: Children created by this operator that the caches may not show yet.
    expected: dict[tuple[str, str], Any] = field(default_factory=dict)
    client: StatusClient | None = None
    #: (address, CA) the client was made for.
    client_for: tuple[str, str | None] | None = None
    reading: AggregatorReading = field(default_factory=AggregatorReading)
    read_at: float = 0.0
    #: Statuses this operator wrote that the watch has not shown yet, oldest first, and
    #: the status that was visible before them: while the watched object shows one of
    #: these, it lags behind our own last write, which is then the base of the next pass.
    pending: list[dict[str, Any]] = field(default_factory=list)
    replaced: dict[str, Any] | None = None
    #: Children the API server refused to create, by (kind, name), until created.
    refused: dict[tuple[str, str], _Refusal] = field(default_factory=dict)
    #: The phase last written (the operator's jobs-by-phase metric).
    phase: str | None = None
    #: When this operator first saw the job, as a rank (kube.ORDER): in a burst of new
    #: jobs, the API requests of earlier ones go first.
    order: int = 0
    #: The Kueue ResourceFlavors of the job's current admission, read once per admission
    #: (`flavors_of`: which admission they were read for).
    flavors: dict[str, observed.FlavorState] = field(default_factory=dict)
    flavors_of: tuple[Any, ...] | None = None

    def base_status(self, visible: dict[str, Any]) -> dict[str, Any]:
        if not self.pending:
            return visible
        if visible == self.pending[-1]:
            self.pending.clear()  # caught up
            return visible
        if visible == self.replaced or visible in self.pending[:-1]:
            return self.pending[-1]  # our writes are still on their way
        self.pending.clear()  # someone else wrote the status: start from theirs
        return visible

    def wrote(self, visible: dict[str, Any], status: dict[str, Any]) -> None:
        if not self.pending:
            self.replaced = visible
        self.pending.append(status)


@dataclass(frozen=True)
class _Pass:
    """What one reconcile pass plans from."""

    runtime: Runtime
    memory: _JobMemory
    job: FlexTrainJob
    status: FlexTrainJobStatus | None
    snapshot: Snapshot
    reading: AggregatorReading
    now: datetime
    uid: str

    def seen(self) -> observed.Observed:
        """The children as the caches and this operator's own creates show them now."""
        state = self.runtime._observe(self.memory, self.snapshot, self.job)
        return dataclasses.replace(state, secret=self.memory.secret, certificate=self.memory.certificate)

    def plan(self, seen: observed.Observed, refused: Sequence[CreateFailure] = ()) -> Plan:
        snapshot = self.snapshot
        return reconcile(
            self.job,
            self.status,
            snapshot.device_tiers,
            snapshot.nodes,
            seen,
            self.reading,
            self.now,
            self.runtime.settings,
            self.memory.token or new_token(),
            invalid_tiers={k: v.message for k, v in snapshot.invalid_tiers.items()},
            refused=refused,
            flavors=self.memory.flavors,
            certificates=self.memory.certs,
        )


class Runtime:
    """Shared by every handler: settings, the API client, wake-ups and per-job memory."""

    def __init__(self, settings: OperatorSettings, kube: KubeClient | None = None) -> None:
        self.settings = settings
        self.kube = kube or KubeClient()
        self.stats: Counter[str] = Counter()
        self._wakeups: dict[Key, asyncio.Event] = {}
        self._jobs: dict[Key, _JobMemory] = {}
        self._node_digest: dict[str, NodeInfo] = {}
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="getstatus")
        self._passes = asyncio.Semaphore(PASSES_AT_ONCE)
        self._order = itertools.count(1)
        self.tiers = TierRefresher(self)
        #: Whether this replica reconciles now (always, without leader election).
        self.leader = False
        #: The leader election of this replica (flextrain.operator.leader), if any.
        self.elector: Any = None

    # -- wake-ups --------------------------------------------------------------------

    def register(self, key: Key) -> asyncio.Event:
        event = self._wakeups.setdefault(key, asyncio.Event())
        event.set()  # the first pass runs at once
        return event

    def wake(self, key: Key) -> None:
        event = self._wakeups.get(key)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in self._wakeups.values():
            event.set()

    def forget(self, key: Key) -> None:
        """The job's daemon stopped (job deleted or operator exiting): drop its memory."""
        self._wakeups.pop(key, None)
        memory = self._jobs.pop(key, None)
        if memory and memory.client:
            memory.client.close()

    @property
    def jobs(self) -> int:
        return len(self._wakeups)

    def phases(self) -> Counter[str]:
        """Jobs served now, by the phase last written ("Unknown" before the first)."""
        return Counter(m.phase or "Unknown" for m in self._jobs.values())

    def node_changed(self, name: str, info: NodeInfo | None) -> bool:
        """Record a node's summary; True when it differs from the last one seen."""
        before = self._node_digest.get(name)
        if info is None:
            self._node_digest.pop(name, None)
            return before is not None
        self._node_digest[name] = info
        return before != info

    async def close(self) -> None:
        self.tiers.cancel()
        for key in list(self._jobs):
            self.forget(key)
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self.kube.close()

    # -- one pass --------------------------------------------------------------------

    async def reconcile_job(self, body: Mapping[str, Any], snapshot: Snapshot) -> float:
        """Reconcile one FlexTrainJob once; returns the seconds until the next pass."""
        self.stats["reconciles"] += 1
        meta = dict(body.get("metadata") or {})
        name, namespace = str(meta.get("name")), str(meta.get("namespace") or "default")
        key = job_key(namespace, name)
        memory = self._jobs.get(key)
        if memory is None:
            memory = self._jobs[key] = _JobMemory(order=next(self._order))
        ORDER.set(memory.order)  # this pass's requests (its task's context only)
        now = datetime.now(UTC)
        visible = dict(body.get("status") or {})
        status_before = memory.base_status(visible)
        body = {**body, "status": status_before}
        involved = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta}
        try:
            job = FlexTrainJob.model_validate(
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "metadata": meta,
                    "spec": dict(body.get("spec") or {}),
                }
            )
        except ValidationError as exc:
            failed, events = invalid_spec_status(parse_status(body), f"invalid spec: {exc}", now)
            await self._write_status(
                memory, job_ref(namespace, name), status_before, failed, visible
            )
            for event in events:
                await self._event(involved, event.type, event.reason, event.message)
            return self.settings.status_interval
        status = parse_status(body)
        uid = str(meta.get("uid") or "")

        seen = self._observe(memory, snapshot, job)
        # New: nothing written to its status yet (parse_status reads a missing status as
        # an empty one, never None) and no child in the caches.
        fresh = not any(k != "kopf" for k in status_before) and not seen.any_child
        tls = seen.aggregator.tls if seen.aggregator is not None else builders.tls_enabled(job)
        own_certificates = tls and not self.settings.cert_manager
        await self._ensure_token(memory, job, uid, fresh=fresh, tls=own_certificates)
        if own_certificates:
            await self._renew_certificates(memory, job, uid, now)
        seen = dataclasses.replace(seen, secret=memory.secret, certificate=memory.certificate)
        reading = await self._read_aggregator(memory, seen, namespace, name)
        if seen.workload is not None:
            await self._read_flavors(memory, seen.workload)

        # Planning and creating hold the pass's children in memory: a burst of new jobs
        # plans a few at a time (PASSES_AT_ONCE), not every job at once.
        async with self._passes:
            pass_ = _Pass(self, memory, job, status, snapshot, reading, now, uid)
            plan, created = await self._create_missing(pass_, pass_.plan(pass_.seen()))
        # The Events and the status are written without holding a slot.
        events = list(plan.events)
        if created:
            events.insert(0, Event("Normal", JobReason.CREATED, f"created {', '.join(created)}"))
        await self._apply(plan, events, job, involved, status_before, visible, memory)
        return self._next_pass_in(plan, memory)

    async def _create_missing(self, p: _Pass, plan: Plan) -> tuple[Plan, list[str]]:
        """Create the plan's children, then plan once more from what exists now and what
        was refused, so that the status and the Events say what the pass achieved.
        Returns that plan and `Kind name` of each child created."""
        memory, uid = p.memory, p.uid
        planned: list[Mapping[str, Any]] = list(plan.create)
        created: list[str] = []
        secret = [o for o in plan.create if o["kind"] == "Secret"]
        if secret:
            # The aggregator and the trainers read the Secret, so reconcile plans them only
            # once the job owns it: create the Secret, then plan again from what exists
            # and create them. What reads no token (the Service) is created meanwhile.
            rest: list[Mapping[str, Any]] = []

            async def after_secret() -> None:
                await self._create_children(memory, secret, uid, created)
                tried = {_child_key(o) for o in planned}
                rest.extend(o for o in p.plan(p.seen()).create if _child_key(o) not in tried)
                await self._create_children(memory, rest, uid, created)

            meanwhile = [o for o in plan.create if o["kind"] != "Secret"]
            await asyncio.gather(
                self._create_children(memory, meanwhile, uid, created), after_secret()
            )
            planned += rest
        else:
            await self._create_children(memory, plan.create, uid, created)
        keys = [_child_key(o) for o in planned]
        for key in list(memory.refused):
            if key not in keys:
                del memory.refused[key]  # no longer wanted (or created meanwhile)
        refused = [memory.refused[k].failure for k in keys if k in memory.refused]
        return (p.plan(p.seen(), refused) if planned else plan), created

    def _next_pass_in(self, plan: Plan, memory: _JobMemory) -> float:
        """Seconds until the next pass: the status interval, sooner for a requeue or a
        refused create's retry."""
        delay = self.settings.status_interval
        if plan.requeue_after is not None:
            delay = max(0.05, min(delay, plan.requeue_after))
        if memory.refused:
            retry = min(r.retry_at for r in memory.refused.values()) - time.monotonic()
            delay = max(0.05, min(delay, retry))
        return delay

    async def _ensure_token(
        self, memory: _JobMemory, job: FlexTrainJob, uid: str, *, fresh: bool, tls: bool
    ) -> None:
        """Know the job's token (and, with `tls`, its certificates): read its Secret once
        per daemon (the operator restarted, or the job is older than this process); a
        brand-new job gets a new token and certificates, and its Secret is created (a 409
        then means it existed after all). A Secret the job does not own is read again on
        every pass until it is gone: its token is never used. The Secret of a job created
        before tier keys (or TLS) existed gets them added."""
        if memory.token is not None:
            return
        name, namespace = job.metadata.name, job.metadata.namespace or "default"
        secret = (
            None
            if fresh
            else await self.kube.get("v1", "Secret", names.secret_name(name), namespace)
        )
        if secret is None:
            memory.secret = None
            memory.token = new_token()
            memory.certs = self._issue(job) if tls else None
            return
        self._remember_secret(memory, secret, uid)
        if memory.token is not None:
            have = secret.get("data") or {}
            if tls and memory.certs is None:
                memory.certs = self._issue(job)
            wanted = builders.secret_data(job, memory.token, memory.certs if tls else None)
            missing = {k: v for k, v in wanted.items() if k not in have}
            if tls and memory.certs is not None and certs.CERT_KEY in missing:
                # Unreadable or partial TLS keys are replaced as a whole.
                missing |= {k: wanted[k] for k in memory.certs.secret_data()}
            if missing:
                await self.kube.patch("v1", "Secret", names.secret_name(name), namespace, {"data": missing})
                log.info("added the tier keys %s to Secret %s/%s", sorted(missing), namespace, names.secret_name(name))

    def _issue(self, job: FlexTrainJob) -> certs.Certificates:
        """A new CA and serving certificate for the job's aggregator (~0.3 ms of CPU)."""
        ca_name = f"flextrain {job.metadata.namespace or 'default'}/{job.metadata.name}"
        self.stats["certificates_issued"] += 1
        return certs.issue(
            ca_name,
            builders.certificate_names(job, self.settings),
            now=datetime.now(UTC),
            days=self.settings.tls_certificate_days,
        )

    async def _renew_certificates(
        self, memory: _JobMemory, job: FlexTrainJob, uid: str, now: datetime
    ) -> None:
        """A new serving certificate (same CA) into the job's Secret once less than
        `tls_renew_fraction` of the current one's lifetime is left; the aggregator serves
        it from its next handshake on (flextrain.aggregator.servicer.TlsFiles)."""
        current = memory.certs
        secret = memory.secret
        if current is None or secret is None or secret.controller_uid != uid:
            return
        if now < current.renew_at(self.settings.tls_renew_fraction):
            return
        renewed = certs.renew(
            current,
            builders.certificate_names(job, self.settings),
            now=now,
            days=self.settings.tls_certificate_days,
        )
        data = {
            k: base64.b64encode(v.encode()).decode()
            for k, v in renewed.secret_data().items()
            if v != current.secret_data()[k]
        }
        name, namespace = names.secret_name(job.metadata.name), job.metadata.namespace or "default"
        await self.kube.patch("v1", "Secret", name, namespace, {"data": data})
        memory.certs = renewed
        self.stats["certificates_renewed"] += 1
        log.info(
            "renewed the aggregator certificate of %s/%s (%s), valid until %s",
            namespace, job.metadata.name,
            "same CA" if renewed.ca_cert == current.ca_cert else "new CA: trainers pick it up when they restart",
            renewed.not_after.isoformat(),
        )

    @staticmethod
    def _remember_secret(memory: _JobMemory, secret: Mapping[str, Any], uid: str) -> None:
        memory.secret = observed.child_state(secret)
        if memory.secret.controller_uid != uid:
            memory.token = None  # someone else's: never used, and looked up again
            memory.certs = None
            return
        data = secret.get("data") or {}
        token = data.get(names.TOKEN_KEY)
        memory.token = base64.b64decode(token).decode() if token else memory.token or new_token()
        memory.certs = _certificates_of(data)

    def _observe(
        self, memory: _JobMemory, snapshot: Snapshot, job: FlexTrainJob
    ) -> observed.Observed:
        tier_jobs = {s.tier: s for s in snapshot.tier_jobs}
        # One of each per job: the cached one, else one this operator created moments
        # ago that the caches do not show yet (dropped from memory once they do).
        single: dict[str, Any] = {
            "Deployment": snapshot.aggregators[0] if snapshot.aggregators else None,
            "Workload": snapshot.workloads[0] if snapshot.workloads else None,
            **{kind: (states[0] if states else None) for kind, states in _simple_children(snapshot).items()},
        }
        for (kind, child), state in list(memory.expected.items()):
            if kind == "Job" and isinstance(state, observed.TierJobState):
                if state.tier in tier_jobs:
                    del memory.expected[(kind, child)]
                else:
                    tier_jobs[state.tier] = state
            elif kind in single:
                if single[kind] is not None:
                    del memory.expected[(kind, child)]
                else:
                    single[kind] = state
        return observed.Observed(
            secret=memory.secret,
            service=single["Service"],
            network_policy=single["NetworkPolicy"],
            disruption_budget=single["PodDisruptionBudget"],
            checkpoint_claim=single["PersistentVolumeClaim"],
            aggregator=single["Deployment"],
            tier_jobs=tier_jobs,
            pods=tuple(snapshot.pods),
            workload=single["Workload"],
        )

    async def _read_flavors(self, memory: _JobMemory, workload: observed.WorkloadState) -> None:
        """The ResourceFlavors Kueue admitted the job's Workload with: read once per
        admission (their node labels and tolerations place the pods), never while it
        waits. A flavor that cannot be read is left out (the job says so and waits)."""
        if not workload.admitted:
            memory.flavors_of = None
            return
        admission = (workload.cluster_queue, tuple(sorted(workload.flavors.items())))
        if memory.flavors_of == admission:
            return
        wanted = sorted({f for assigned in workload.flavors.values() for f in assigned})
        bodies = await asyncio.gather(
            *(self.kube.get(names.KUEUE_API_VERSION, "ResourceFlavor", f, None) for f in wanted)
        )
        memory.flavors = {
            f: observed.flavor_state(body) for f, body in zip(wanted, bodies, strict=True) if body
        }
        memory.flavors_of = admission if len(memory.flavors) == len(wanted) else None

    async def _read_aggregator(
        self, memory: _JobMemory, seen: observed.Observed, namespace: str, name: str
    ) -> AggregatorReading:
        """GetStatus, at most once per status interval, only while the aggregator runs."""
        agg = seen.aggregator
        if agg is None or agg.available < 1 or memory.token is None:
            memory.reading = AggregatorReading()
            return memory.reading
        if time.monotonic() - memory.read_at < self.settings.status_interval * 0.9:
            return memory.reading
        address = self.settings.status_address_of(namespace, name, names.aggregator_name(name))
        ca = None
        if agg.tls:
            ca = await self._trusted_ca(memory, namespace, name)
            if ca is None:
                holder = builders.tls_secret_name(name, self.settings)
                memory.reading = AggregatorReading(
                    error=f"the aggregator serves TLS but Secret {holder} holds no readable "
                    f"{certs.CA_CERT_KEY} to verify it with"
                )
                memory.read_at = time.monotonic()
                return memory.reading
        if memory.client is None or memory.client_for != (address, ca):
            if memory.client:
                memory.client.close()
            memory.client = StatusClient(
                address,
                memory.token,
                ca=ca.encode() if ca else None,
                server_name=names.tls_server_name(name, namespace) if ca else None,
            )
            memory.client_for = (address, ca)
        client = memory.client
        loop = asyncio.get_running_loop()
        self.stats["getstatus"] += 1
        try:
            result = await loop.run_in_executor(
                self._executor, client.get, self.settings.status_timeout
            )
            memory.reading = AggregatorReading(status=result)
        except StatusUnavailable as exc:
            memory.reading = AggregatorReading(error=str(exc))
            # Not kept while it fails: a TLS channel holds about 140 KiB (its own TLS
            # context, resolver and reconnect state), and a job whose aggregator does not
            # answer would keep one for nothing. The next read starts a fresh one.
            client.close()
            memory.client = None
            memory.client_for = None
        memory.read_at = time.monotonic()
        return memory.reading

    async def _trusted_ca(self, memory: _JobMemory, namespace: str, name: str) -> str | None:
        """The CA the aggregator's certificate must chain to: the job's own (known with its
        Secret), or, with cert-manager, `ca.crt` of the Secret cert-manager wrote, read
        once (again only while reads fail, at most every 10 status intervals)."""
        if not self.settings.cert_manager:
            return memory.certs.ca_cert if memory.certs else None
        stale = memory.reading.error is not None and (
            time.monotonic() - memory.issued_ca_read_at > 10 * self.settings.status_interval
        )
        if memory.issued_ca is None or stale:
            memory.issued_ca_read_at = time.monotonic()
            secret = await self.kube.get("v1", "Secret", names.certificate_name(name), namespace)
            raw = ((secret or {}).get("data") or {}).get(certs.CA_CERT_KEY)
            try:
                memory.issued_ca = base64.b64decode(raw).decode() if raw else None
            except ValueError:
                memory.issued_ca = None
        return memory.issued_ca

    async def _create_children(
        self,
        memory: _JobMemory,
        objects: Sequence[Mapping[str, Any]],
        uid: str,
        created: list[str],
    ) -> None:
        """Create children concurrently (they are independent), each refused one retried
        with backoff: not before its retry time, unless what would be created changed.
        What exists already is remembered; `created` gets `Kind name` of each new one."""
        now = time.monotonic()
        due = []
        for obj in objects:
            refusal = memory.refused.get(_child_key(obj))
            if refusal is None or refusal.digest != _digest(obj) or now >= refusal.retry_at:
                due.append(obj)
        results = await asyncio.gather(
            *(self._create(obj, uid) for obj in due), return_exceptions=True
        )
        for obj, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            key = _child_key(obj)
            kind, child = key
            if isinstance(result, CreateFailure):
                self.stats["create_refused"] += 1
                before = memory.refused.get(key)
                digest = _digest(obj)
                attempts = before.attempts + 1 if before and before.digest == digest else 1
                delay = backoff_delay(attempts)
                memory.refused[key] = _Refusal(result, digest, attempts, time.monotonic() + delay)
                log.warning("%s (attempt %d, retry in %.0fs)", result.describe(), attempts, delay)
                continue
            memory.refused.pop(key, None)
            body, new = result
            if new:
                created.append(f"{kind} {child}")
            if kind == "Secret":
                self._remember_secret(memory, body, uid)
            elif kind == "Certificate":
                memory.certificate = observed.child_state(body)
            elif (summary := _summary(kind, body)) is not None:
                memory.expected[key] = summary

    async def _create(
        self, obj: Mapping[str, Any], uid: str
    ) -> tuple[Mapping[str, Any], bool] | CreateFailure:
        """Create one child: (the object, True) when created, (what exists, False) when it
        existed already and is this job's (the caches were behind) or is the Secret, else
        why it could not be created."""
        kind, name = _child_key(obj)
        namespace = obj["metadata"].get("namespace")
        try:
            made = await self.kube.create(obj)
            self.stats["created"] += 1
            return (made or obj), True
        except Conflict as exc:
            existing = None
            if exc.reason in ("AlreadyExists", ""):
                existing = await self.kube.get(obj["apiVersion"], kind, name, namespace)
            if existing is None:
                return CreateFailure(kind, name, exc.status, exc.reason, exc.message)
            if kind == "Secret" or observed.controller_uid(existing) == uid:
                return existing, False  # a Secret of someone else: reconcile says so
            return CreateFailure(
                kind,
                name,
                exc.status,
                exc.reason,
                f"{exc.message}; it is not this job's (delete or rename it, the operator "
                "never takes over objects it did not create)",
            )
        except KubeError as exc:
            return CreateFailure(kind, name, exc.status, exc.reason, exc.message)

    async def _apply(
        self,
        plan: Plan,
        events: Sequence[Event],
        job: FlexTrainJob,
        involved: Mapping[str, Any],
        status_before: Mapping[str, Any],
        visible: dict[str, Any],
        memory: _JobMemory,
    ) -> None:
        """Patch what the job owns, post the Events, write the status if it changed."""
        name, namespace = job.metadata.name, job.metadata.namespace or "default"
        for patch in plan.patch:
            await self.kube.patch(
                patch.api_version,
                patch.kind,
                patch.name,
                patch.namespace,
                patch.body,
                subresource=patch.subresource,
            )
            self.stats["patched"] += 1
        for event in events:
            await self._event(involved, event.type, event.reason, event.message)
        await self._write_status(
            memory, job_ref(namespace, name), status_before, plan.status, visible
        )
        if plan.delete_job:
            await self.kube.delete(API_VERSION, KIND, name, namespace)

    async def _write_status(
        self,
        memory: _JobMemory,
        ref: tuple[str, str],
        before: Mapping[str, Any],
        status: FlexTrainJobStatus,
        visible: dict[str, Any],
    ) -> None:
        after = status.to_wire()
        memory.phase = str(status.phase) if status.phase else memory.phase
        patch = status_patch(before, after)
        if not patch:
            return
        namespace, name = ref
        self.stats["status_patches"] += 1
        await self.kube.patch(
            API_VERSION, KIND, name, namespace, {"status": patch}, subresource="status"
        )
        memory.wrote(visible, after)

    async def _event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        if not self.settings.events:
            return
        self.stats["events"] += 1
        try:
            await self.kube.post_event(involved, type_, reason, message)
        except KubeError as exc:  # an Event is not worth failing the pass for
            log.warning("could not post event %s: %s", reason, exc)


def job_ref(namespace: str, name: str) -> tuple[str, str]:
    return (namespace, name)


def _certificates_of(data: Mapping[str, str]) -> certs.Certificates | None:
    """The TLS chain in a Secret's (base64) data; None when it has none or it is
    unreadable (a TLS job's Secret then gets a new one)."""
    if certs.CERT_KEY not in data:
        return None
    try:
        plain = {k: base64.b64decode(data[k]).decode() for k in certs.secret_keys() if k in data}
        return certs.load(plain)
    except (ValueError, certs.CertificateError) as exc:
        log.warning("the TLS keys of a job Secret are unusable, issuing new ones: %s", exc)
        return None


def _child_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(obj["kind"]), str(obj["metadata"]["name"]))


def _digest(obj: Mapping[str, Any]) -> str:
    """What a child would be, in short: a refused child whose digest changed (the job or
    its DeviceTier was edited) is retried at once."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def backoff_delay(attempts: int) -> float:
    """Seconds before retrying after `attempts` failures in a row: 1, 2, 4, ... 60 (the
    shared flextrain.backoff). Refused creates and failed passes (handlers.py) use it."""
    return backoff.backoff_delay(attempts, base=BACKOFF_BASE, cap=BACKOFF_MAX)


#: The children of which a job has one and only needs to know who controls it.
SIMPLE_CHILDREN: Final[tuple[str, ...]] = ("Service", "NetworkPolicy", "PodDisruptionBudget", "PersistentVolumeClaim")


def _simple_children(snapshot: Snapshot) -> dict[str, Sequence[observed.ChildState]]:
    return {
        "Service": snapshot.services,
        "NetworkPolicy": snapshot.network_policies,
        "PodDisruptionBudget": snapshot.disruption_budgets,
        "PersistentVolumeClaim": snapshot.checkpoint_claims,
    }


def _summary(kind: str, body: Mapping[str, Any]) -> Any:
    if kind == "Job":
        return observed.tier_job_state(body)
    if kind == "Deployment":
        return observed.aggregator_state(body)
    if kind == "PersistentVolumeClaim":
        return observed.claim_state(body)
    if kind == "Workload":
        return observed.workload_state(body)
    if kind in SIMPLE_CHILDREN:
        return observed.child_state(body)
    return None


class TierRefresher:
    """Recomputes DeviceTier statuses after node or tier changes, debounced: a burst of
    node updates costs one pass over the tiers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._task: asyncio.Task[None] | None = None
        self._tiers: Mapping[str, Iterable[DeviceTier | InvalidDeviceTier]] | None = None
        self._nodes: Mapping[str, Iterable[NodeInfo]] | None = None

    def poke(
        self,
        tiers: Mapping[str, Iterable[DeviceTier | InvalidDeviceTier]],
        nodes: Mapping[str, Iterable[NodeInfo]],
    ) -> None:
        """Schedule a refresh; `tiers` and `nodes` are the live caches (name -> values)."""
        self._tiers, self._nodes = tiers, nodes
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        await asyncio.sleep(self.runtime.settings.tier_debounce)
        try:
            await self.refresh()
        except KubeError as exc:
            log.warning("DeviceTier status refresh failed: %s", exc)

    async def refresh(self) -> None:
        if self._tiers is None or self._nodes is None:
            return
        nodes = [n for values in self._nodes.values() for n in values]
        now = datetime.now(UTC).replace(microsecond=0)
        for name in list(self._tiers):
            for tier in list(self._tiers.get(name, ())):
                if not isinstance(tier, DeviceTier):
                    continue  # invalid: the jobs on it say why
                new = device_tier_status(tier, nodes, now).to_wire()
                before = tier.status.to_wire() if tier.status else {}
                patch = status_patch(before, new)
                if patch:
                    self.runtime.stats["tier_status_patches"] += 1
                    await self.runtime.kube.patch(
                        API_VERSION,
                        "DeviceTier",
                        name,
                        None,
                        {"status": patch},
                        subresource="status",
                    )
