"""The test control plane itself: the node pools are Ready, the real scheduler places
pods by pool (selectors, taints, tolerations, extended resources), the real Job
controller runs Indexed Jobs on the node agent's pods, and a stopped node goes NotReady."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tests.cluster.conftest import wait_for
from tests.cluster.node_agent import NodeAgent


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "example.invalid/none:1"}],
            **spec,
        },
    }


def _placed(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    return core.read_namespaced_pod(name, namespace).spec.node_name


def test_every_pool_node_is_ready_with_its_labels(api: client.ApiClient, node_names: list[str]) -> None:
    core = client.CoreV1Api(api)
    listed = {n.metadata.name: n for n in core.list_node().items}
    assert set(node_names) <= set(listed)
    for name in node_names:
        node = listed[name]
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True", (name, ready)
    assert listed["edge-0"].metadata.labels["kubernetes.io/arch"] == "arm64"
    assert listed["gpu-0"].status.allocatable["nvidia.com/gpu"] == "4"


def test_scheduler_places_pods_by_pool(api: client.ApiClient, agent: NodeAgent, namespace: str) -> None:
    core = client.CoreV1Api(api)
    gpu = _pod(
        "wants-gpu",
        nodeSelector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    gpu["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    edge = _pod(
        "on-edge",
        nodeSelector={"kubernetes.io/arch": "arm64"},
        tolerations=[{"key": "flextrain.dev/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    )
    untolerated = _pod("edge-without-toleration", nodeSelector={"kubernetes.io/arch": "arm64"})
    plain = _pod("anywhere")
    for body in (gpu, edge, untolerated, plain):
        core.create_namespaced_pod(namespace, body)

    assert wait_for(lambda: _placed(core, namespace, "wants-gpu"), timeout=30, what="GPU pod bound").startswith("gpu-")
    assert wait_for(lambda: _placed(core, namespace, "on-edge"), timeout=30, what="edge pod bound").startswith("edge-")
    # Untainted nodes only: the CPU pool.
    assert wait_for(lambda: _placed(core, namespace, "anywhere"), timeout=30, what="plain pod bound").startswith("cpu-")

    def unschedulable() -> str | None:
        pod = core.read_namespaced_pod("edge-without-toleration", namespace)
        cond = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        return cond.message if cond is not None and cond.reason == "Unschedulable" else None

    message = wait_for(unschedulable, timeout=30, what="the scheduler's Unschedulable reason")
    assert "untolerated taint" in message, message
    assert _placed(core, namespace, "edge-without-toleration") is None

    # The node agent runs what was bound.
    running = wait_for(
        lambda: core.read_namespaced_pod("on-edge", namespace).status.phase == "Running",
        timeout=30,
        what="edge pod Running",
    )
    assert running


def test_indexed_job_runs_to_completion(api: client.ApiClient, agent: NodeAgent, namespace: str) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "indexed"},
            "spec": {
                "completionMode": "Indexed",
                "completions": 2,
                "parallelism": 2,
                "template": {"spec": _pod("x")["spec"]},
            },
        },
    )
    pods = wait_for(
        lambda: [p for p in core.list_namespaced_pod(namespace).items if p.status.phase == "Running"]
        if len(core.list_namespaced_pod(namespace).items) == 2
        else None,
        timeout=30,
        what="two Running pods of the Indexed Job",
    )
    indexes = sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"]
    for pod in pods:
        agent.finish(namespace, pod.metadata.name, 0)

    def complete() -> bool:
        job = batch.read_namespaced_job("indexed", namespace)
        return any(c.type == "Complete" and c.status == "True" for c in job.status.conditions or [])

    assert wait_for(complete, timeout=30, what="Job Complete")
