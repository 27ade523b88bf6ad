"""The operator against a real control plane: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler of Kubernetes v1.37.2 in one process
(tests/cluster/controlplane, built by scripts/build-controlplane.sh), the chart installed
with helm, the operator as its own process logged in with the chart's ServiceAccount
token, as tests/cluster runs it.

Setup per scenario, in a temporary directory:
- the control plane, its API server writing an audit log of the operator's
  ServiceAccount only (level Metadata: user, verb, object, code, timestamps);
- node pools `gpu` and `cpu` (untainted, `flextrain.dev/pool` labels, 110 pods per node,
  as many nodes as the job count needs) kept Ready by the node agent of tests/cluster in
  status mode (a process of its own): pods the scheduler binds become Running and Ready;
- `helm install` of charts/flextrain, then the wait until the API server can check
  FlexTrainJob owner references (its RESTMapper reloads every 30 s);
- DeviceTiers `gpu` and `cpu` (the emulator benchmark's), and the operator:
  `flextrain operator -A` with the chart's environment (status every 10 s), the
  aggregator address resolved through the node agent's cluster DNS.

Measured, from watches in this process (monotonic clock, each object's first event):
- creation -> all children: from the FlexTrainJob create call returning until its
  8 children exist (benchmarks/operator/common.py children_of);
- creation -> all pods scheduled: until each of its 3 trainer pods has spec.nodeName
  (kube-controller-manager's Job controller creates them, kube-scheduler binds them);
- creation -> all pods Ready (the node agent makes bound pods Running and Ready) and
  -> phase Running, split into pods Ready -> the Deployment and both Jobs report them
  (kube-controller-manager) and from then -> Running (the operator);
- the operator's API requests, from the audit log: during creation (first create until
  every job is Running and the operator has been quiet for `quiet` seconds), then in a
  steady window of `settle` seconds; those naming a job, one of its children or one of
  its Events (objectRef) are the job's;
- the operator's resident memory: VmRSS sampled every 0.25 s, VmHWM (peak).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client, config

from benchmarks.operator.agent import READY as AGENT_READY
from benchmarks.operator.common import (
    CHILD_KINDS,
    NS,
    TIERS,
    children_of,
    cpu_seconds,
    job_body,
    job_name,
    proc_status,
    summary,
)
from flextrain.operator import names
from tests.cluster import install, nodes
from tests.cluster.controlplane import ControlPlane
from tests.factories import make_tier
from tests.tools import REPO, ensure_tools

OPERATOR_USER = f"system:serviceaccount:{install.NAMESPACE}:{install.RELEASE}-flextrain"
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["{OPERATOR_USER}"]
- level: None
"""
PODS_PER_NODE = 110
#: objectRef names of a job's own requests: the job, `<job>-...` children, `<job>.<hex>` Events.
JOB_OF = re.compile(r"^(bench-\d{3,})(?:$|[-.])")
TRAINERS_PER_JOB = sum(t["replicas"] for t in TIERS)


def pools(jobs: int) -> tuple[nodes.Pool, ...]:
    """Pools `gpu` and `cpu` with room for every pod at 110 pods per node: the gpu pool
    for 1 trainer and the cpu pool for 2 trainers per job, each also for every
    aggregator (they go to any Linux node)."""
    allocatable = {"cpu": "128", "memory": "512Gi", "pods": str(PODS_PER_NODE)}
    room = PODS_PER_NODE - 10
    return tuple(
        nodes.Pool(
            pool,
            max(2, math.ceil((trainers + 1) * jobs / room)),
            "amd64",
            {"flextrain.dev/pool": pool},
            (),
            dict(allocatable),
        )
        for pool, trainers in (("gpu", 1), ("cpu", 2))
    )


# -- the API as the benchmark sees it ------------------------------------------------


@dataclasses.dataclass
class Seen:
    """First-event times (time.monotonic()) of what the watches showed."""

    children: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    #: job -> trainer pod name -> when spec.nodeName was first seen set.
    scheduled: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    #: job -> pod name (trainers and the aggregator) -> when first seen Ready.
    ready: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    #: (kind, name) -> when the Deployment first reported an available replica, a tier
    #: Job all its replicas ready.
    reported: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    running: dict[str, float] = dataclasses.field(default_factory=dict)

    def child(self, kind: str, obj: dict[str, Any], now: float) -> None:
        key = (kind, obj["metadata"]["name"])
        self.children.setdefault(key, now)
        status, spec = obj.get("status") or {}, obj.get("spec") or {}
        if (kind == "Deployment" and (status.get("availableReplicas") or 0) >= 1) or (
            kind == "Job" and (status.get("ready") or 0) >= (spec.get("parallelism") or 1)
        ):
            self.reported.setdefault(key, now)

    def pod(self, obj: dict[str, Any], now: float) -> None:
        labels = obj["metadata"].get("labels") or {}
        job, name = labels.get(names.JOB_LABEL), obj["metadata"]["name"]
        if not job:
            return
        trainer = labels.get(names.COMPONENT_LABEL) == names.TRAINER
        if trainer and (obj.get("spec") or {}).get("nodeName"):
            self.scheduled.setdefault(job, {}).setdefault(name, now)
        conditions = (obj.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            self.ready.setdefault(job, {}).setdefault(name, now)

    def flextrainjob(self, obj: dict[str, Any], now: float) -> None:
        if (obj.get("status") or {}).get("phase") == "Running":
            self.running.setdefault(obj["metadata"]["name"], now)

    def children_at(self, job: str) -> float | None:
        times = [self.children.get(key) for key in children_of(job)]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def scheduled_at(self, job: str) -> float | None:
        pods = self.scheduled.get(names.label_value(job), {})
        return max(pods.values()) if len(pods) >= TRAINERS_PER_JOB else None

    def reported_at(self, job: str) -> float | None:
        """When its Deployment and both tier Jobs reported their pods (the controllers)."""
        keys = [k for k in children_of(job) if k[0] in ("Deployment", "Job")]
        times = [self.reported.get(k) for k in keys]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def ready_at(self, job: str) -> float | None:
        """When its 3 trainer pods and its aggregator pod were all Ready."""
        pods = self.ready.get(names.label_value(job), {})
        return max(pods.values()) if len(pods) >= TRAINERS_PER_JOB + 1 else None


class Api:
    """An admin session (aiohttp) for the jobs' creates and the watches."""

    def __init__(self, plane: ControlPlane) -> None:
        self.server = plane.server
        self.headers = {
            "Authorization": f"Bearer {plane.admin_token()}",
            "Accept": "application/json",
        }
        self.ssl = ssl.create_default_context(cafile=str(plane.ca_file))
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession(
            headers=self.headers,
            connector=aiohttp.TCPConnector(ssl=self.ssl, limit=32),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )
        return self

    async def __aexit__(self, *_: Any) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        assert self.session is not None
        await self.session.close()

    async def create(self, path: str, body: dict[str, Any]) -> None:
        assert self.session is not None
        async with self.session.post(self.server + path, json=body) as resp:
            text = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"POST {path}: {resp.status} {text[:500]}")

    async def watch(
        self, path: str, handle: Callable[[dict[str, Any], float], None], selector: str = ""
    ) -> None:
        """List, then watch from that version (re-listing when it expires); `handle` gets
        every object with the monotonic time its event arrived. Returns once watching."""
        started = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._watch(path, handle, selector, started))
        self.tasks.append(task)
        await asyncio.wait([started, task], return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            task.result()  # it failed before watching: raise why

    async def _watch(
        self,
        path: str,
        handle: Callable[[dict[str, Any], float], None],
        selector: str,
        started: asyncio.Future[None],
    ) -> None:
        assert self.session is not None
        base = {"labelSelector": selector} if selector else {}
        version = ""
        retry_until = time.monotonic() + 60
        while True:
            if not version:
                async with self.session.get(self.server + path, params=base) as resp:
                    listed = await resp.json()
                    now = time.monotonic()
                if (resp.status == 429 or resp.status >= 500) and time.monotonic() < retry_until:
                    # "storage is (re)initializing": a new CRD's storage, for a moment
                    await asyncio.sleep(1.0)
                    continue
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: {resp.status} {listed}")
                for item in listed.get("items") or []:
                    handle(item, now)
                version = listed["metadata"]["resourceVersion"]
            params = {
                **base,
                "watch": "1",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "3600",
            }
            async with self.session.get(self.server + path, params=params) as resp:
                if resp.status == 410:
                    version = ""
                    continue
                if (resp.status == 429 or resp.status >= 500) and time.monotonic() < retry_until:
                    await asyncio.sleep(1.0)
                    continue
                if resp.status != 200:
                    raise RuntimeError(f"watch {path}: {resp.status} {await resp.text()}")
                if not started.done():
                    started.set_result(None)
                buffer = b""
                async for chunk in resp.content.iter_any():
                    now = time.monotonic()
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            version = ""  # expired: list again
                            break
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            handle(obj, now)


# -- the operator's requests ----------------------------------------------------------


def _epoch(stamp: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in stamp else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.strptime(stamp, fmt).replace(tzinfo=UTC).timestamp()


@dataclasses.dataclass(frozen=True)
class Request:
    at: float  # wall clock (time.time()) when the API server received it
    done: float  # ... and when it answered (for a watch: when its response started)
    verb: str
    resource: str  # resource[/subresource]
    namespace: str
    name: str
    code: int
    user_agent: str

    @property
    def job(self) -> str | None:
        """The benchmark job this request is about (itself, a child or one of its Events)."""
        if self.namespace != NS:
            return None
        match = JOB_OF.match(self.name)
        return match.group(1) if match else None

    @property
    def what(self) -> str:
        return f"{self.verb} {self.resource}"


class AuditLog:
    """The operator's requests from the API server's audit log, read as it grows; each
    request once (a watch has a ResponseStarted and a ResponseComplete event)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rest = b""
        self._seen: set[str] = set()
        self.requests: list[Request] = []

    def read(self) -> list[Request]:
        if not self.path.exists():
            return self.requests
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            if event["user"]["username"] != OPERATOR_USER or event["auditID"] in self._seen:
                continue
            if (event.get("objectRef") or {}).get("resource") == "leases":
                continue  # the leader election's renewals (one every 2 s), not the handlers' work
            self._seen.add(event["auditID"])
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "") or event.get("requestURI", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            self.requests.append(
                Request(
                    at=_epoch(event["requestReceivedTimestamp"]),
                    done=_epoch(event["stageTimestamp"]),
                    verb=event["verb"],
                    resource=resource,
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    code=int((event.get("responseStatus") or {}).get("code") or 0),
                    user_agent=event.get("userAgent", ""),
                )
            )
        return self.requests

    def between(self, start: float, end: float) -> list[Request]:
        return [r for r in self.read() if start <= r.at < end]


# -- the operator's memory ------------------------------------------------------------


class MemorySampler:
    """VmRSS of a process every `interval` seconds in a thread: (monotonic, KiB)."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status(self.pid).get("VmRSS")
            if rss is not None:
                self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> list[int]:
        return [kib for at, kib in list(self.samples) if start <= at <= end]


def memory_map(pid: int) -> dict[str, float]:
    """Resident MiB by kind of mapping (/proc/<pid>/smaps): the heap, anonymous memory
    (thread arenas and stacks, Python's arenas, native libraries' allocations), files
    (code and data of Python and the native libraries); and the number of threads."""
    out: dict[str, float] = {"heap": 0.0, "anonymous": 0.0, "files": 0.0}
    kind = "anonymous"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):
                path = head[5] if len(head) > 5 else ""
                kind = (
                    "heap" if path == "[heap]" else "files" if path.startswith("/") else "anonymous"
                )
            elif head[0] == "Rss:":
                out[kind] += int(head[1]) / 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                out["threads"] = float(line.split()[1])
    return {k: round(v, 1) for k, v in out.items()}


# -- one scenario ---------------------------------------------------------------------


@dataclasses.dataclass
class Cluster:
    plane: ControlPlane
    api: client.ApiClient
    audit: AuditLog
    agent: subprocess.Popen[str]
    dns: str
    nodes: list[str]
    setup_seconds: dict[str, float]


@contextlib.contextmanager
def real_cluster(work: Path, jobs: int) -> Any:
    """Control plane, nodes, node agent, chart and DeviceTiers; everything stopped after."""
    times: dict[str, float] = {}
    began = time.monotonic()
    policy = work / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    plane = ControlPlane.start(
        work / "controlplane", audit_log=work / "audit.log", audit_policy=policy
    )
    times["control plane"] = plane.start_seconds
    agent: subprocess.Popen[str] | None = None
    try:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        mark = time.monotonic()
        node_names = nodes.register(api, pools(jobs))
        (work / "agent").mkdir()
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.operator.agent",
                str(plane.kubeconfig),
                str(work / "agent"),
                *node_names,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=(work / "agent.log").open("w"),
            text=True,
            start_new_session=True,
        )
        assert agent.stdout is not None
        line = agent.stdout.readline()
        if not line.startswith(AGENT_READY):
            raise RuntimeError(
                f"the node agent did not start: {line!r}; {(work / 'agent.log').read_text()[-2000:]}"
            )
        dns = line[len(AGENT_READY) :].strip().removeprefix("dns=")
        nodes.wait_untainted(api, timeout=90)
        times["nodes ready"] = time.monotonic() - mark
        mark = time.monotonic()
        install.install_chart(ensure_tools() / "helm", plane)
        times["helm install"] = time.monotonic() - mark
        mark = time.monotonic()
        install.wait_owner_kind_known(api, plane, timeout=90)
        times["RESTMapper knows FlexTrainJob"] = time.monotonic() - mark
        custom = client.CustomObjectsApi(api)
        for tier in ("gpu", "cpu"):
            custom.create_cluster_custom_object(
                "flextrain.dev", "v1alpha1", "devicetiers", make_tier(tier)
            )
        times["setup total"] = time.monotonic() - began
        yield Cluster(plane, api, AuditLog(work / "audit.log"), agent, dns, node_names, times)
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait(10)
        plane.stop()


def scenario(
    jobs: int, *, settle: float, quiet: float = 10.0, keep: Path | None = None
) -> dict[str, Any]:
    """One run with `jobs` FlexTrainJobs created at once; `keep`: a directory that keeps
    the logs (control plane, audit, operator, agent) instead of a temporary one."""
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="operator-bench-")))
        else:
            work = keep
            work.mkdir(parents=True, exist_ok=True)
        cluster = stack.enter_context(real_cluster(work, jobs))
        kubeconfig = install.token_kubeconfig(
            cluster.api,
            cluster.plane,
            f"{install.RELEASE}-flextrain",
            install.NAMESPACE,
            work / "sa.kubeconfig",
        )
        env = {
            **install.chart_operator_env(cluster.api),
            "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS": f"dns://{cluster.dns}/{{service}}.{{namespace}}.svc:{{port}}",
        }
        operator = install.OperatorProcess(kubeconfig, env, work / "operator.log").start()
        stack.callback(operator.stop)
        operator.wait_live(timeout=90)
        assert operator.proc is not None
        result = asyncio.run(_measure(cluster, operator, jobs, settle=settle, quiet=quiet))
        operator.stop()
        result["rbac_denials"] = len(operator.forbidden())
        result["setup_seconds"] = cluster.setup_seconds
    result["wall_seconds"] = time.monotonic() - began
    return result


async def _measure(
    cluster: Cluster, operator: install.OperatorProcess, jobs: int, *, settle: float, quiet: float
) -> dict[str, Any]:
    assert operator.proc is not None
    pid = operator.proc.pid
    memory = MemorySampler(pid).start()
    seen = Seen()
    try:
        async with Api(cluster.plane) as api:
            for kind, path in CHILD_KINDS.items():
                await api.watch(path, lambda obj, now, kind=kind: seen.child(kind, obj, now))
            await api.watch(
                f"/api/v1/namespaces/{NS}/pods",
                seen.pod,
                selector=names.JOB_LABEL,
            )
            await api.watch(
                f"/apis/flextrain.dev/v1alpha1/namespaces/{NS}/flextrainjobs", seen.flextrainjob
            )

            # The operator has listed everything and refreshed the DeviceTiers' status.
            await _quiet(cluster.audit, quiet=3.0, timeout=60)
            idle_rss = proc_status(pid).get("VmRSS", 0)
            cpu_start = cpu_seconds(pid)
            startup_requests = len(cluster.audit.read())

            # 1. creation
            created: dict[str, float] = {}
            created_wall: dict[str, float] = {}
            semaphore = asyncio.Semaphore(16)

            async def create(i: int) -> None:
                async with semaphore:
                    await api.create(
                        f"/apis/flextrain.dev/v1alpha1/namespaces/{NS}/flextrainjobs", job_body(i)
                    )
                    created[job_name(i)] = time.monotonic()
                    created_wall[job_name(i)] = time.time()

            creation_wall = time.time()
            creation_start = time.monotonic()
            await asyncio.gather(*(create(i) for i in range(jobs)))
            created_all = time.monotonic() - creation_start
            all_names = [job_name(i) for i in range(jobs)]
            await _until(
                lambda: all(seen.children_at(n) for n in all_names),
                120 + jobs,
                "every job's children",
            )
            children_all = time.monotonic() - creation_start
            await _until(
                lambda: all(seen.scheduled_at(n) for n in all_names),
                300 + 2 * jobs,
                "every trainer pod scheduled",
            )
            scheduled_all = time.monotonic() - creation_start
            await _until(
                lambda: all(seen.ready_at(n) for n in all_names),
                300 + 2 * jobs,
                "every pod Ready",
            )
            ready_all = time.monotonic() - creation_start
            await _until(
                lambda: all(n in seen.running for n in all_names),
                300 + 2 * jobs,
                "every job Running",
            )
            running_all = time.monotonic() - creation_start
            # The operator is done with the jobs once it has been quiet for `quiet` s.
            await _quiet(cluster.audit, quiet=quiet, timeout=120)
            creation_cpu = cpu_seconds(pid) - cpu_start
            creation_rss = memory.between(creation_start, time.monotonic())

            # 2. steady state
            steady_wall, steady_start = time.time(), time.monotonic()
            cpu_steady_start = cpu_seconds(pid)
            await asyncio.sleep(settle)
            steady_end_wall, steady_end = time.time(), time.monotonic()
            steady_cpu = cpu_seconds(pid) - cpu_steady_start
            await asyncio.sleep(1.0)  # let the audit log catch up
            final = proc_status(pid)
            mapped = memory_map(pid)
    finally:
        memory.stop()

    creation_reqs = cluster.audit.between(creation_wall, steady_wall)
    steady_reqs = cluster.audit.between(steady_wall, steady_end_wall)
    minutes = (steady_end - steady_start) / 60
    steady_rss = memory.between(steady_start, steady_end)
    by_job = Counter(r.job for r in steady_reqs if r.job)
    timeline = [
        (round(at - creation_start, 2), round(kib / 1024, 1))
        for at, kib in memory.samples[::4]
        if at >= creation_start - 5
    ]
    return {
        "backend": "real",
        "jobs": jobs,
        "children_seconds": summary([seen.children_at(n) - created[n] for n in all_names]),  # type: ignore[operator]
        "all_children_seconds": children_all,
        "scheduled_seconds": summary([seen.scheduled_at(n) - created[n] for n in all_names]),  # type: ignore[operator]
        "all_scheduled_seconds": scheduled_all,
        "ready_seconds": summary([seen.ready_at(n) - created[n] for n in all_names]),  # type: ignore[operator]
        "all_ready_seconds": ready_all,
        "running_seconds_from_creation": summary([seen.running[n] - created[n] for n in all_names]),
        "running_after_ready_seconds": summary(
            [seen.running[n] - seen.ready_at(n) for n in all_names]  # type: ignore[operator]
        ),
        "reported_after_ready_seconds": summary(
            [seen.reported_at(n) - seen.ready_at(n) for n in all_names]  # type: ignore[operator]
        ),
        "running_after_reported_seconds": summary(
            [seen.running[n] - seen.reported_at(n) for n in all_names]  # type: ignore[operator]
        ),
        "all_running_seconds": running_all,
        "creates_returned_seconds": created_all,
        "breakdown_seconds": _breakdown(creation_reqs, created_wall),
        "phases_seconds": {
            "children": children_all,
            "scheduled": scheduled_all,
            "ready": ready_all,
            "running": running_all,
            "steady": steady_start - creation_start,
        },
        "rss_timeline_mib": timeline,
        "startup_requests": startup_requests,
        "creation_window_seconds": steady_wall - creation_wall,
        "creation_requests_per_job": len(creation_reqs) / jobs,
        "creation_job_requests_per_job": sum(1 for r in creation_reqs if r.job) / jobs,
        "creation_requests_by_kind": dict(Counter(r.what for r in creation_reqs).most_common()),
        "creation_response_codes": dict(Counter(str(r.code) for r in creation_reqs).most_common()),
        "steady_window_seconds": steady_end - steady_start,
        "steady_requests": len(steady_reqs),
        "steady_requests_by_kind": dict(Counter(r.what for r in steady_reqs).most_common()),
        "steady_status_patches_per_job": sum(
            1 for r in steady_reqs if r.job and r.resource == "flextrainjobs/status"
        )
        / jobs,
        "steady_requests_per_job_per_minute": len(steady_reqs) / jobs / minutes,
        "steady_job_requests_per_job_per_minute": sum(by_job.values()) / jobs / minutes,
        "steady_jobs_with_requests": len(by_job),
        "rss_idle_mib": idle_rss / 1024,
        "rss_creation_max_mib": max(creation_rss, default=0) / 1024,
        "rss_steady_mib": (statistics.median(steady_rss) if steady_rss else final.get("VmRSS", 0))
        / 1024,
        "rss_with_jobs_mib": final.get("VmRSS", 0) / 1024,
        "rss_peak_mib": final.get("VmHWM", 0) / 1024,
        "rss_by_mapping_mib": mapped,
        "operator_cpu_seconds": creation_cpu + steady_cpu,
        "operator_cpu_creation_seconds": creation_cpu,
        "operator_cpu_steady_per_minute": steady_cpu / minutes,
    }


def _breakdown(requests: list[Request], created: dict[str, float]) -> dict[str, dict[str, float]]:
    """Where a job's creation -> children time goes, from the audit log (p50/p95/max over
    the jobs, seconds from the job's create call returning): the operator's first request
    for the job (kopf's finalizer PATCH), its last child create sent, that create's answer;
    and the API server's time for the slowest child create of each job."""
    first: dict[str, float] = {}
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    server: dict[str, float] = {}
    for r in requests:
        job = r.job
        if job is None or job not in created:
            continue
        first[job] = min(first.get(job, r.at), r.at)
        if r.verb == "create" and r.resource in ("secrets", "services", "deployments", "jobs"):
            sent[job] = max(sent.get(job, r.at), r.at)
            answered[job] = max(answered.get(job, r.done), r.done)
            server[job] = max(server.get(job, 0.0), r.done - r.at)
    out = {}
    for what, times in (
        ("operator's first request", first),
        ("last child create sent", sent),
        ("last child create answered", answered),
    ):
        if times:
            out[what] = summary([t - created[job] for job, t in times.items()])
    if server:
        out["API server time of the slowest child create"] = summary(list(server.values()))
    return out


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _quiet(audit: AuditLog, *, quiet: float, timeout: float) -> None:
    """Wait until the operator has sent no request for `quiet` seconds (audit log)."""
    deadline = time.monotonic() + timeout
    count, since = len(audit.read()), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the operator was not quiet for {quiet:.0f} s within {timeout:.0f} s"
            )
        await asyncio.sleep(0.25)
        now = len(audit.read())
        if now != count:
            count, since = now, time.monotonic()
