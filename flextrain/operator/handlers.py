"""kopf handlers: the only module that imports kopf.

- Indices (kept current by kopf's watches, complete before any handler runs): DeviceTiers,
  Nodes, and the children of FlexTrainJobs (tier Jobs, aggregator Deployments, Services,
  trainer Pods), the latter watched with a server-side `flextrain.dev/job` selector.
- One daemon per FlexTrainJob runs reconcile passes: at once on start (operator restart
  included), whenever the job, one of its children, a DeviceTier or a node changes, and
  every `status_interval` seconds (aggregator status, deadline). Passes of one job never
  overlap, so its status is written by one writer.
- DeviceTier statuses are refreshed after node and tier changes (debounced).
- Liveness: kopf's `/healthz` (main.py passes `--liveness`), with probes reporting the
  number of jobs served and leadership.
- Several replicas (`leader_election`): kopf runs only in the replica holding the Lease
  (flextrain.operator.leader); a standby runs no kopf at all, so it sends no write (kopf
  would add finalizers), and serves liveness itself (run_operator).

Run it with `flextrain operator` (main.py). The handlers live in their own registry
(REGISTRY, handed to kopf.operator), not kopf's default one: kopf's default registry
adds its own login handlers, which read KUBECONFIG at import time; so `kopf run -m` does
not see these handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import kopf

from flextrain.api.common import GROUP, VERSION
from flextrain.api.devicetier import DeviceTier
from flextrain.operator import kube, leader, metrics, names, observed
from flextrain.operator.config import OperatorSettings, SettingsError
from flextrain.operator.runtime import (
    InvalidDeviceTier,
    Runtime,
    Snapshot,
    backoff_delay,
    job_key,
    parse_device_tier,
)
from flextrain.operator.tiers import NodeInfo, node_info

REGISTRY = kopf.OperatorRegistry()
T = TypeVar("T")
FINALIZER = "flextrain.dev/operator"
ANNOTATIONS_PREFIX = "operator.flextrain.dev"
JOBS = (GROUP, VERSION, "flextrainjobs")
TIERS = (GROUP, VERSION, "devicetiers")
HAS_JOB = {names.JOB_LABEL: kopf.PRESENT}
WORKLOADS = ("kueue.x-k8s.io", "v1beta2", "workloads")
log = logging.getLogger("flextrain.operator")


class _NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """No last-handled state: kopf diffs it only for on.create/update/delete handlers
    (and for idle daemons), and this operator has none. kopf would otherwise build it on
    every watch event of every watched kind (two deep copies of each Pod, Job and
    Deployment), measured as about a third of the operator's CPU while jobs are created.
    Index handlers are coroutines for the same reason: kopf runs plain functions in a
    thread pool, a thread hand-off per event."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None


def _runtime(memo: Any) -> Runtime:
    runtime = memo.get("runtime") if isinstance(memo, Mapping) else getattr(memo, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise kopf.PermanentError("the operator was started without its runtime")
    return runtime


# -- operator lifecycle -----------------------------------------------------------------


@kopf.on.startup(registry=REGISTRY)
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    if "runtime" not in memo:  # kopf.operator(registry=REGISTRY) without run_operator()
        memo["runtime"] = Runtime(OperatorSettings.from_env())
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATIONS_PREFIX
    )
    settings.persistence.diffbase_storage = _NoDiffBase(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what happened
    # No kopf peering: with several replicas, only the holder of the Lease runs kopf at
    # all (run_operator, flextrain.operator.leader).
    settings.peering.standalone = True
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    watched = CHILDREN + ((WORKLOAD_CHILD,) if _runtime(memo).settings.kueue else ())
    for _, resource, _, _ in watched:
        settings.watching.label_selectors[resource] = names.JOB_LABEL


def _credentials(info: kopf.ConnectionInfo) -> kube.Credentials:
    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return kube.Credentials(
        server=info.server,
        ca_path=text(info.ca_path),
        ca_data=info.ca_data,
        insecure=bool(info.insecure),
        scheme=info.scheme,
        token=info.token,
        certificate_path=text(info.certificate_path),
        certificate_data=info.certificate_data,
        private_key_path=text(info.private_key_path),
        private_key_data=info.private_key_data,
    )


def _connection_info(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **kwargs: Any
) -> kopf.ConnectionInfo:
    """In a pod: its service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
    info = kopf.login_with_service_account(settings=settings, logger=logger, **kwargs)
    info = info or kopf.login_with_kubeconfig(settings=settings, logger=logger, **kwargs)
    if info is None:
        raise kopf.LoginError("no service account and no kubeconfig to log in with")
    return info


@kopf.on.login(registry=REGISTRY)
async def login(
    memo: Any,
    settings: kopf.OperatorSettings,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> kopf.ConnectionInfo:
    """In a pod: its service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
    info = _connection_info(settings, logger, **kwargs)
    _runtime(memo).kube.set_credentials(_credentials(info))
    return info


@kopf.on.cleanup(registry=REGISTRY)
async def cleanup(memo: Any, **_: Any) -> None:
    await _runtime(memo).close()


@kopf.on.probe(id="jobs", registry=REGISTRY)
async def probe_jobs(memo: Any, **_: Any) -> int:
    return _runtime(memo).jobs


@kopf.on.probe(id="leader", registry=REGISTRY)
async def probe_leader(memo: Any, **_: Any) -> bool:
    return _runtime(memo).leader


# -- indices (in-memory caches kept by kopf's watches) -----------------------------------


@kopf.index(*TIERS, registry=REGISTRY)
async def device_tiers(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    """Every DeviceTier: parsed, or what is wrong with it (jobs say so, not "not found")."""
    return {name: parse_device_tier(body)}


@kopf.index("", "v1", "nodes", registry=REGISTRY)
async def nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    return {name: node_info(body)}


#: The children of FlexTrainJobs the operator watches: (index id, resource, label
#: selector, summary of one object). Each gets an index (job key -> summaries, handed to
#: the job daemons by its id) and an event handler that wakes the job's daemon; their
#: watches carry a server-side label selector (`configure`). Kueue's Workloads are
#: watched the same way, only with the Kueue integration on (`watch_workloads`).
CHILDREN: tuple[tuple[str, tuple[str, str, str], Mapping[str, Any], Callable[[Any], Any]], ...] = (
    ("tier_jobs", ("batch", "v1", "jobs"), HAS_JOB, observed.tier_job_state),
    ("aggregators", ("apps", "v1", "deployments"), HAS_JOB, observed.aggregator_state),
    ("services", ("", "v1", "services"), HAS_JOB, observed.child_state),
    ("network_policies", ("networking.k8s.io", "v1", "networkpolicies"), HAS_JOB, observed.child_state),
    ("disruption_budgets", ("policy", "v1", "poddisruptionbudgets"), HAS_JOB, observed.child_state),
    ("checkpoint_claims", ("", "v1", "persistentvolumeclaims"), HAS_JOB, observed.claim_state),
    (
        "trainer_pods",
        ("", "v1", "pods"),
        {**HAS_JOB, names.COMPONENT_LABEL: names.TRAINER},
        observed.pod_state,
    ),
)
WORKLOAD_CHILD = ("workloads", WORKLOADS, HAS_JOB, observed.workload_state)


# -- wake-ups ----------------------------------------------------------------------------


async def child_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    _runtime(memo).wake((namespace or "", labels[names.JOB_LABEL]))


def _watch_child(
    name: str, resource: tuple[str, str, str], labels: Mapping[str, Any], summary: Callable[[Any], Any]
) -> None:
    """Index one child kind under `name` (async: kopf runs plain functions in a thread)
    and wake a job's daemon on its events."""

    async def index(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {(namespace, labels[names.JOB_LABEL]): summary(body)}

    kopf.index(*resource, id=name, labels=dict(labels), registry=REGISTRY)(index)
    kopf.on.event(*resource, id=f"{name}_changed", labels=dict(labels), registry=REGISTRY)(
        child_changed
    )


for _child in CHILDREN:
    _watch_child(*_child)


def watch_workloads() -> None:
    """Index and watch Kueue Workloads: only with the Kueue integration on, so that an
    operator on a cluster without Kueue neither watches nor needs RBAC for them (kopf
    serves a resource once its CRD exists, and warns until then). Registered once per
    process, before kopf starts."""
    if not any(h.id == "workloads" for h in REGISTRY._indexing.get_all_handlers()):
        _watch_child(*WORKLOAD_CHILD)


@kopf.on.event(*JOBS, registry=REGISTRY)
async def job_changed(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    _runtime(memo).wake(job_key(namespace or "", name))


@kopf.on.event(*TIERS, registry=REGISTRY)
async def tier_changed(memo: Any, **kwargs: Any) -> None:
    device_tiers: kopf.Index[str, Any] = kwargs["device_tiers"]
    nodes: kopf.Index[str, NodeInfo] = kwargs["nodes"]
    runtime = _runtime(memo)
    runtime.wake_all()
    runtime.tiers.poke(device_tiers, nodes)


@kopf.on.event("", "v1", "nodes", registry=REGISTRY)
async def node_changed(name: str, type: str, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    device_tiers: kopf.Index[str, Any] = kwargs["device_tiers"]
    nodes: kopf.Index[str, NodeInfo] = kwargs["nodes"]
    runtime = _runtime(memo)
    info = None if type == "DELETED" else node_info(body)
    if runtime.node_changed(name, info):  # heartbeats change nothing the operator reads
        runtime.wake_all()
        runtime.tiers.poke(device_tiers, nodes)


# -- the per-job loop --------------------------------------------------------------------


def _values(index: kopf.Index[Any, Any], key: Any) -> list[Any]:
    return list(index.get(key, ()))


def _tiers(index: kopf.Index[str, Any], kind: type[T]) -> dict[str, T]:
    """The indexed DeviceTiers that parsed (`DeviceTier`) or did not (`InvalidDeviceTier`)."""
    return {
        name: tier
        for name, store in index.items()
        for tier in store
        if isinstance(tier, kind)
    }


def _nodes(index: kopf.Index[str, NodeInfo]) -> list[NodeInfo]:
    return [n for store in index.values() for n in store]


@kopf.daemon(*JOBS, registry=REGISTRY, cancellation_timeout=5.0, backoff=5.0)
async def flextrainjob(
    name: str,
    namespace: str | None,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **indices: Any,
) -> None:
    """Reconcile one FlexTrainJob until it is deleted or the operator stops."""
    device_tiers: kopf.Index[str, Any] = indices["device_tiers"]
    nodes: kopf.Index[str, NodeInfo] = indices["nodes"]
    tier_jobs: kopf.Index[Any, Any] = indices["tier_jobs"]
    aggregators: kopf.Index[Any, Any] = indices["aggregators"]
    services: kopf.Index[Any, Any] = indices["services"]
    network_policies: kopf.Index[Any, Any] = indices["network_policies"]
    disruption_budgets: kopf.Index[Any, Any] = indices["disruption_budgets"]
    checkpoint_claims: kopf.Index[Any, Any] = indices["checkpoint_claims"]
    trainer_pods: kopf.Index[Any, Any] = indices["trainer_pods"]
    workload_index: kopf.Index[Any, Any] | None = indices.get("workloads")
    runtime = _runtime(memo)
    key = job_key(namespace or "", name)
    wakeup = runtime.register(key)
    stop = asyncio.ensure_future(stopped.wait())
    errors = 0
    try:
        while not stopped:
            wakeup.clear()
            snapshot = Snapshot(
                device_tiers=_tiers(device_tiers, DeviceTier),
                invalid_tiers=_tiers(device_tiers, InvalidDeviceTier),
                nodes=_nodes(nodes),
                tier_jobs=_values(tier_jobs, key),
                aggregators=_values(aggregators, key),
                services=_values(services, key),
                network_policies=_values(network_policies, key),
                disruption_budgets=_values(disruption_budgets, key),
                checkpoint_claims=_values(checkpoint_claims, key),
                pods=_values(trainer_pods, key),
                workloads=_values(workload_index, key) if workload_index is not None else (),
            )
            try:
                delay = await runtime.reconcile_job(body, snapshot)
                errors = 0
            except kube.KubeError as exc:
                errors += 1
                runtime.stats["reconcile_errors"] += 1
                delay = backoff_delay(errors)
                logger.warning("reconcile failed (retry in %.1fs): %s", delay, exc)
            waiter = asyncio.ensure_future(wakeup.wait())
            try:
                await asyncio.wait(
                    {waiter, stop}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
    finally:
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop
        runtime.forget(key)


# -- running -----------------------------------------------------------------------------


async def run_operator(
    settings: OperatorSettings,
    *,
    liveness_endpoint: str | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    runtime: Runtime | None = None,
) -> None:
    """Run the operator in the current event loop until `stop_flag` (or a signal).

    With `settings.leader_election`, first wait as a standby until this replica holds the
    Lease (serving liveness and metrics, sending no write), then run kopf while renewing
    it. Raises `LeadershipLost` when the Lease is lost: the handlers' client is fenced
    (no more writes) and kopf stopped before it returns; the caller exits non-zero and
    the restarted process stands by. A stop (signal or `stop_flag`) releases the Lease
    so that a standby takes over at once."""
    runtime = runtime or Runtime(settings)
    if runtime.settings.kueue:
        watch_workloads()
    stop_metrics = metrics.serve(runtime, settings.self_metrics_port) if settings.self_metrics_port else None
    try:
        if not settings.leader_election:
            runtime.leader = True
            await _kopf(settings, runtime, liveness_endpoint, stop_flag, ready_flag)
        else:
            await _lead(settings, runtime, liveness_endpoint, stop_flag, ready_flag)
    finally:
        runtime.leader = False
        if stop_metrics:
            stop_metrics()


async def _kopf(
    settings: OperatorSettings,
    runtime: Runtime,
    liveness_endpoint: str | None,
    stop_flag: asyncio.Event | None,
    ready_flag: asyncio.Event | None,
) -> None:
    await kopf.operator(
        registry=REGISTRY,
        clusterwide=settings.cluster_wide,
        namespaces=list(settings.namespaces),
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        standalone=True,
        memo=kopf.Memo(runtime=runtime),
    )


#: Seconds a leader that lost its Lease gives kopf to stop before cancelling it (the
#: handlers' client is fenced at once; lease_duration - renew_deadline is the margin).
STOP_AFTER_LOSS = 2.0
#: Seconds a stopping leader waits for kopf to stop before it releases the Lease: kopf
#: gives its event workers 2 s (settings.batching.exit_timeout); the handlers' client is
#: fenced from the stop on.
RELEASE_AFTER = 2.5


def lease_namespace(settings: OperatorSettings) -> str:
    """The Lease's namespace: the setting, else the operator's own namespace, else the
    namespace of the pod's service account."""
    if settings.leader_election_namespace or settings.self_namespace:
        return settings.leader_election_namespace or settings.self_namespace
    with (
        contextlib.suppress(OSError),
        open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f,
    ):
        if namespace := f.read().strip():
            return namespace
    raise SettingsError(
        "leader election needs the Lease's namespace: set FLEXTRAIN_OPERATOR_LEADER_ELECTION_NAMESPACE "
        "or FLEXTRAIN_OPERATOR_SELF_NAMESPACE (the chart sets the latter)"
    )


async def _lead(
    settings: OperatorSettings,
    runtime: Runtime,
    liveness_endpoint: str | None,
    stop_flag: asyncio.Event | None,
    ready_flag: asyncio.Event | None,
) -> None:
    namespace = lease_namespace(settings)
    kopf_settings = kopf.OperatorSettings()
    try:
        lease_client = kube.KubeClient(_credentials(_connection_info(kopf_settings, log)))
    except (kopf.LoginError, OSError, KeyError, ValueError) as exc:
        raise SettingsError(f"leader election: cannot log in to the API server: {exc}") from None

    async def relogin() -> None:
        lease_client.set_credentials(_credentials(_connection_info(kopf_settings, log)))

    elector = leader.LeaderElector(
        lease_client,
        namespace=namespace,
        name=settings.leader_election_lease,
        identity=leader.identity(),
        lease_duration=settings.lease_duration,
        renew_deadline=settings.renew_deadline,
        retry_period=settings.retry_period,
        relogin=relogin,
    )
    runtime.elector = elector
    stop = asyncio.Event()
    relay = asyncio.ensure_future(stop_flag.wait()) if stop_flag is not None else None
    if relay is not None:
        relay.add_done_callback(lambda _: stop.set())
    signals = _Signals(stop)
    try:
        log.info("standing by for Lease %s/%s as %s", elector.namespace, elector.name, elector.identity)
        signals.install()
        async with _standby_liveness(liveness_endpoint, elector):
            if not await elector.acquire(stop):
                return  # stopped while standing by
        runtime.leader = True
        kopf_ready = asyncio.Event()

        async def when_ready() -> None:
            await kopf_ready.wait()
            # kopf replaced the signal handlers when it started; a signal must set its
            # stop flag instead, or kopf waits 5 s for its own stop-flag waiter to end.
            signals.install()
            if ready_flag is not None:
                ready_flag.set()

        stopping = asyncio.ensure_future(stop.wait())
        kopf_task = asyncio.ensure_future(_kopf(settings, runtime, liveness_endpoint, stop, kopf_ready))
        hold = asyncio.ensure_future(elector.hold())
        ready = asyncio.ensure_future(when_ready())
        try:
            await asyncio.wait({kopf_task, hold, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if hold.done() and isinstance(hold.exception(), leader.LeadershipLost):
                lost = hold.exception()
                runtime.leader = False
                runtime.kube.fence(f"leadership lost: {lost}")
                log.error("leadership lost (%s): stopping without another write", lost)
                stop.set()
                await asyncio.wait({kopf_task}, timeout=STOP_AFTER_LOSS)
                kopf_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await kopf_task
                raise leader.LeadershipLost(str(lost))
            # Stopping (a signal, stop_flag) or kopf ended: no handler writes from now on;
            # kopf's watches stop at once and its event workers within 2 s; then the Lease
            # is released, while kopf may still be waiting for daemons mid-pass (up to 5 s),
            # which can no longer write.
            runtime.kube.fence("the operator is stopping")
            stop.set()
            await asyncio.wait({kopf_task}, timeout=RELEASE_AFTER)
            hold.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hold
            runtime.leader = False
            await elector.release()
            await kopf_task
        finally:
            for task in (stopping, ready, hold):
                task.cancel()
    finally:
        signals.remove()
        if relay is not None:
            relay.cancel()
        await lease_client.close()


class _Signals:
    """SIGTERM and SIGINT set `flag` (in the main thread; elsewhere nothing is installed)."""

    def __init__(self, flag: asyncio.Event) -> None:
        self.flag = flag
        self.installed: list[signal.Signals] = []

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.flag.set)
                if sig not in self.installed:
                    self.installed.append(sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.installed:
            loop.remove_signal_handler(sig)
        self.installed.clear()


@contextlib.asynccontextmanager
async def _standby_liveness(endpoint: str | None, elector: leader.LeaderElector) -> AsyncIterator[None]:
    """The liveness endpoint while standing by (kopf serves it once this replica leads):
    200 with `{"leader": false, "holder": ...}` while the event loop runs."""
    if not endpoint:
        yield
        return
    from aiohttp import web

    url = urllib.parse.urlsplit(endpoint)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": False, "holder": elector.holder})

    app = web.Application()
    app.router.add_get(url.path or "/", healthz)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, url.hostname, url.port or 80, reuse_address=True).start()
        yield
    finally:
        await runner.cleanup()
