"""The real kopf operator, in process, against the Kubernetes emulator on loopback.

`running_operator()` starts the emulator's HTTP server on 127.0.0.1, writes a kubeconfig
for it (the operator logs in through it, as it would outside a cluster), runs the
operator's kopf loop as a task, and stops both in `finally` with bounded waits.
Tests play the controllers: they patch Job, Deployment, Pod and Node status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml

from flextrain.operator import handlers
from flextrain.operator.config import OperatorSettings
from flextrain.operator.runtime import Runtime
from tests.integration.kube_emulator import KubeEmulator

NS = "default"
FTJ = "flextrain.dev/v1alpha1/flextrainjobs"
DT = "flextrain.dev/v1alpha1/devicetiers"
JOBS = "batch/v1/jobs"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
PODS = "v1/pods"
NODES = "v1/nodes"
EVENTS = "v1/events"

FAST = OperatorSettings(
    status_interval=0.3,
    status_timeout=2.0,
    tier_debounce=0.05,
    finish_grace=0.5,
    image="registry.example/flextrain:test",
)


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "test-token"}}],
                "contexts": [
                    {
                        "name": "emulator",
                        "context": {"cluster": "emulator", "user": "tester", "namespace": NS},
                    }
                ],
                "current-context": "emulator",
            }
        )
    )
    return path


def url(
    resource: str, namespace: str | None = None, name: str | None = None, sub: str | None = None
) -> str:
    res = kmock.resource(resource)
    root = f"/api/{res.version}" if not res.group else f"/apis/{res.group}/{res.version}"
    path = f"{root}/namespaces/{namespace}/{res.plural}" if namespace else f"{root}/{res.plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


@dataclasses.dataclass
class Cluster:
    """The emulator plus an HTTP client to it, as tests see them."""

    api: KubeEmulator
    kubeconfig: Path
    server: str
    #: The tests' own HTTP client: one connection per request, so no server-side connection
    #: outlives a request (kopf waits for every task spawned while it ran before exiting).
    #: Without one, kmock's own client is used.
    http: aiohttp.ClientSession | None = None

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.http is None:
            return self.api.request(method, path, **kwargs)
        return self.http.request(method, self.server + path, **kwargs)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        api_version, kind = obj["apiVersion"], obj["kind"]
        resource = {
            "FlexTrainJob": FTJ,
            "DeviceTier": DT,
            "Node": NODES,
            "Pod": PODS,
            "Job": JOBS,
            "Secret": SECRETS,
        }[kind]
        del api_version
        namespaced = kind not in ("DeviceTier", "Node")
        ns = obj["metadata"].get("namespace", NS) if namespaced else None
        async with self._request("POST", url(resource, ns), json=obj) as resp:
            body: dict[str, Any] = await resp.json()
        assert resp.status in (200, 201), body
        return body

    async def patch(
        self, resource: str, namespace: str | None, name: str, body: Any, *, sub: str | None = None
    ) -> dict[str, Any]:
        ctype = (
            "application/json-patch+json"
            if isinstance(body, list)
            else "application/merge-patch+json"
        )
        async with self._request(
            "PATCH",
            url(resource, namespace, name, sub),
            data=json.dumps(body),
            headers={"Content-Type": ctype},
        ) as resp:
            data: dict[str, Any] = await resp.json()
        assert resp.status == 200, data
        return data

    async def set_status(
        self, resource: str, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.patch(resource, namespace, name, {"status": status}, sub="status")

    async def delete(self, resource: str, namespace: str | None, name: str) -> int:
        async with self._request("DELETE", url(resource, namespace, name)) as resp:
            return resp.status

    def get(self, resource: str, name: str, namespace: str | None = NS) -> dict[str, Any] | None:
        ns = namespace if resource not in (DT, NODES) else None
        return self.api.get(resource, ns, name)

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.api.list(resource, namespace)

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        """Events in the order they were posted (optionally of one reason)."""
        events = sorted(self.list(EVENTS), key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [e for e in events if reason is None or e.get("reason") == reason]

    def status(self, name: str, namespace: str = NS) -> dict[str, Any]:
        obj = self.get(FTJ, name, namespace) or {}
        return dict(obj.get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for c in self.status(name).get("conditions", []):
            if c["type"] == type_:
                return dict(c)
        return None


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "", interval: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy (or raise, naming what)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what or check}: last={last!r}"
    )


@contextlib.asynccontextmanager
async def emulated_cluster(tmp: Path) -> AsyncIterator[Cluster]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        KubeEmulator() as api,
        kmock.Server(api) as server,
        aiohttp.ClientSession(connector=connector) as http,
    ):
        server_url = str(server.url).rstrip("/")
        yield Cluster(api, kubeconfig(tmp / "kubeconfig", server_url), server_url, http)


@dataclasses.dataclass
class Operator:
    runtime: Runtime
    task: asyncio.Task[None]
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def running_operator(
    cluster: Cluster,
    settings: OperatorSettings = FAST,
    *,
    timeout: float = 20.0,
    liveness: str | None = None,
) -> AsyncIterator[Operator]:
    """The operator's kopf loop as a task of this event loop; stopped in `finally`."""
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    stop, ready = asyncio.Event(), asyncio.Event()
    runtime = Runtime(settings)
    task = asyncio.create_task(
        handlers.run_operator(
            settings, stop_flag=stop, ready_flag=ready, runtime=runtime, liveness_endpoint=liveness
        )
    )
    try:
        done, _ = await asyncio.wait(
            {task, asyncio.ensure_future(ready.wait())},
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            task.result()  # raises what stopped it
            raise RuntimeError("the operator exited before it was ready")
        if not ready.is_set():
            raise TimeoutError(f"the operator was not ready within {timeout}s")
        yield Operator(runtime, task, stop)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=15)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, timeout=5)
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


def node(
    name: str,
    labels: dict[str, str],
    *,
    ready: bool = True,
    cpu: str = "8",
    memory: str = "32Gi",
    gpus: int = 0,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", **labels},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": allocatable,
        },
    }


def job_controller(cluster: Cluster) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Play the Job controller: set a tier Job's status counters and conditions."""

    async def set_job(
        name: str,
        *,
        ready: int = 0,
        active: int | None = None,
        succeeded: int = 0,
        failed: int = 0,
        condition: str | None = None,
        reason: str = "",
        message: str = "",
        failed_indexes: str | None = None,
    ) -> dict[str, Any]:
        status: dict[str, Any] = {
            "ready": ready,
            "active": ready if active is None else active,
            "succeeded": succeeded,
            "failed": failed,
        }
        if failed_indexes is not None:
            status["failedIndexes"] = failed_indexes
        if condition:
            status["conditions"] = [
                {"type": condition, "status": "True", "reason": reason, "message": message}
            ]
        return await cluster.set_status(JOBS, NS, name, status)

    return set_job
