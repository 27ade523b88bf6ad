"""A factory's node pools as Node objects, for a control plane without kubelets.

Each node is registered the way a kubelet registers it (labels, taints, capacity and
allocatable, a Ready condition) and kept Ready by renewing its Lease in
`kube-node-lease`, as kubelets do; the node lifecycle controller of the real controller
manager marks a node whose lease stops NotReady and taints it.

| pool | nodes | labels | taint | allocatable |
|---|---|---|---|---|
| gpu | gpu-0, gpu-1 | amd64, `nvidia.com/gpu.present=true`, `flextrain.dev/pool=gpu` | `nvidia.com/gpu=present:NoSchedule` | 32 CPU, 128Gi, 4 `nvidia.com/gpu` |
| cpu | cpu-0 .. cpu-2 | amd64, `flextrain.dev/pool=cpu` | none | 16 CPU, 64Gi |
| edge | edge-0, edge-1 | arm64, `flextrain.dev/pool=edge` | `flextrain.dev/edge=true:NoSchedule` | 4 CPU, 8Gi |
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40


@dataclasses.dataclass(frozen=True)
class Pool:
    name: str
    count: int
    arch: str
    labels: dict[str, str]
    taints: tuple[dict[str, str], ...]
    allocatable: dict[str, str]

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]


POOLS: tuple[Pool, ...] = (
    Pool(
        "gpu",
        2,
        "amd64",
        {"nvidia.com/gpu.present": "true", "flextrain.dev/pool": "gpu"},
        ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},),
        {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "4", "pods": "110"},
    ),
    Pool(
        "cpu",
        3,
        "amd64",
        {"flextrain.dev/pool": "cpu"},
        (),
        {"cpu": "16", "memory": "64Gi", "pods": "110"},
    ),
    Pool(
        "edge",
        2,
        "arm64",
        {"flextrain.dev/pool": "edge"},
        ({"key": "flextrain.dev/edge", "value": "true", "effect": "NoSchedule"},),
        {"cpu": "4", "memory": "8Gi", "pods": "110"},
    ),
)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ready_condition(stamp: str) -> dict[str, str]:
    """The Ready condition a kubelet posts, stamped `stamp`."""
    return {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "node agent (tests/cluster) is posting ready status",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def post_ready(api: client.ApiClient, node: str) -> None:
    """Post the node's Ready condition with a fresh heartbeat, as a restarted kubelet
    does (conditions merge by type: the others stay)."""
    client.CoreV1Api(api).patch_node_status(node, {"status": {"conditions": [ready_condition(now())]}})


def node_manifest(name: str, pool: Pool) -> dict[str, Any]:
    stamp = now()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": pool.arch,
                "beta.kubernetes.io/arch": pool.arch,
                "beta.kubernetes.io/os": "linux",
                **pool.labels,
            },
        },
        "spec": {"taints": [dict(t) for t in pool.taints]},
        "status": {
            "capacity": dict(pool.allocatable),
            "allocatable": dict(pool.allocatable),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                ready_condition(stamp),
                *(
                    {
                        "type": t,
                        "status": "False",
                        "reason": f"KubeletHas{r}",
                        "message": "",
                        "lastHeartbeatTime": stamp,
                        "lastTransitionTime": stamp,
                    }
                    for t, r in (
                        ("MemoryPressure", "SufficientMemory"),
                        ("DiskPressure", "NoDiskPressure"),
                        ("PIDPressure", "SufficientPID"),
                    )
                ),
            ],
            "nodeInfo": {
                "architecture": pool.arch,
                "operatingSystem": "linux",
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "flextrain-node-agent://1",
                "osImage": "tests/cluster node agent",
                "kernelVersion": "",
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
            },
        },
    }


def register(api: client.ApiClient, pools: tuple[Pool, ...] = POOLS) -> list[str]:
    """Create (or refresh) every node of the pools with a fresh lease; their names."""
    core = client.CoreV1Api(api)
    names = []
    for pool in pools:
        for name in pool.node_names():
            body = node_manifest(name, pool)
            try:
                core.create_node(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            # Status is not taken from a create by every API server version: post it as
            # the kubelet does, through the status subresource.
            core.patch_node_status(name, {"status": body["status"]})
            renew_lease(api, name)
            names.append(name)
    return names


def wait_untainted(api: client.ApiClient, *, timeout: float = 60) -> None:
    """Wait until no node carries a `node.kubernetes.io/` taint: the node lifecycle
    controller removes the not-ready taint TaintNodesByCondition put on at registration
    once it has seen the Ready condition and a fresh lease."""
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        pending = [
            n.metadata.name
            for n in core.list_node().items
            if any(t.key.startswith("node.kubernetes.io/") for t in n.spec.taints or [])
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes still tainted not-ready after {timeout:.0f} s: {pending}")
        time.sleep(0.5)


def renew_lease(api: client.ApiClient, node: str) -> None:
    coord = client.CoordinationV1Api(api)
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_now(),
        },
    }
    try:
        coord.patch_namespaced_lease(node, LEASE_NAMESPACE, {"spec": body["spec"]})
    except ApiException as exc:
        if exc.status != 404:
            raise
        coord.create_namespaced_lease(LEASE_NAMESPACE, body)
