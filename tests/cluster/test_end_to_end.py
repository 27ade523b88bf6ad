"""End to end: the quickstart example through the real control plane. The operator (with
the chart's RBAC) creates the children, the real scheduler and controllers place and
run them, the node agent runs each pod's container command as a local process (the real
`flextrain aggregator` and `flextrain trainer`, environment and Secret volumes from the
pod spec), the trainers reach the aggregator through its Service over TLS (the job's own
CA), and the job ends Succeeded with the accuracy per depth in `kubectl get ftj`."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest
from kubernetes import client

from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.node_agent import MODE_LABEL, NodeAgent
from tests.cluster.test_operator import Jobs
from tests.tools import REPO


@pytest.mark.timeout(600)
def test_quickstart_trains_to_succeeded_through_the_control_plane(
    api: client.ApiClient,
    operator: install.OperatorProcess,
    agent: NodeAgent,
    namespace: str,
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    jobs = Jobs(api, namespace)
    jobs.core.patch_namespace(namespace, {"metadata": {"labels": {MODE_LABEL: "exec"}}})
    began = time.monotonic()
    kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "quickstart.yaml"))

    def finished() -> dict[str, object] | None:
        status = jobs.get("quickstart").get("status", {})
        if status.get("phase") == "Failed":
            raise AssertionError(f"the job failed: {status.get('conditions')}")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(finished, timeout=540, interval=1, what="the quickstart to succeed")
    wall = time.monotonic() - began
    print(f"\nquickstart through the control plane: Succeeded in {wall:.1f} s")

    accuracy = {a["depth"]: a["accuracy"] for a in status["accuracy"]}
    assert set(accuracy) == {3, 9}, accuracy
    assert all(a > 0.8 for a in accuracy.values()), accuracy
    assert status["round"] == 8

    table = kubectl("get", "ftj", "-n", namespace).stdout
    print(table)
    row = table.splitlines()[1]
    assert "Succeeded" in row and "d3=0." in row and "d9=0." in row, table

    # Every trainer exited 0 (the Job controller completed every index) and, after the
    # finish grace, the aggregator was scaled to 0: nothing of the job keeps running.
    def every_index_succeeded() -> bool:
        tier_jobs = jobs.batch.list_namespaced_job(namespace).items
        return len(tier_jobs) == 2 and all(j.status.succeeded == j.spec.completions for j in tier_jobs)

    wait_for(every_index_succeeded, timeout=60, what="every trainer index Succeeded (exit 0)")
    wait_for(
        lambda: not [p for p in jobs.core.list_namespaced_pod(namespace).items if p.status.phase == "Running"],
        timeout=60,
        what="no pod of the job running",
    )
    deployment = jobs.apps.list_namespaced_deployment(namespace).items[0]
    assert deployment.spec.replicas == 0

    # All of it over TLS (the default): the aggregator served the job's certificate, the
    # trainers and the operator's status reads (the accuracy above) verified it.
    assert deployment.metadata.annotations["flextrain.dev/tls"] == "Enabled"
    [aggregator] = deployment.spec.template.spec.containers
    assert {e.name for e in aggregator.env} >= {"FLEXTRAIN_TLS_CERT", "FLEXTRAIN_TLS_KEY", "FLEXTRAIN_HEALTH_PORT"}
    for tier_job in jobs.batch.list_namespaced_job(namespace).items:
        [trainer] = tier_job.spec.template.spec.containers
        assert {e.name for e in trainer.env} >= {"FLEXTRAIN_TLS_CA", "FLEXTRAIN_TLS_SERVER_NAME"}
