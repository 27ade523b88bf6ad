"""`helm install` of the chart into the real API server, and the operator running with
the chart's ServiceAccount credentials (its RBAC is what the `operator` fixture proves
sufficient: the session fails on any 403 in the operator's log)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from kubernetes import client

from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.controlplane import ControlPlane


def test_chart_installs_crds_rbac_operator_and_device_tiers(
    api: client.ApiClient, installed_chart: subprocess.CompletedProcess[str]
) -> None:
    ext = client.ApiextensionsV1Api(api)
    for name in ("flextrainjobs.flextrain.dev", "devicetiers.flextrain.dev"):
        crd = ext.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("Established") == "True", (name, conditions)
        assert conditions.get("NamesAccepted") == "True", (name, conditions)
        assert "NonStructuralSchema" not in conditions, (name, conditions)

    rbac = client.RbacAuthorizationV1Api(api)
    bindings = [
        b
        for b in rbac.list_cluster_role_binding().items
        if (b.metadata.labels or {}).get("app.kubernetes.io/instance") == install.RELEASE
    ]
    assert bindings, "the chart created no ClusterRoleBinding"

    # --wait: the real Deployment controller made the operator Deployment available on a
    # pool node (the node agent runs its pod; no image is pulled here).
    apps = client.AppsV1Api(api)
    deployment = next(
        d
        for d in apps.list_namespaced_deployment(install.NAMESPACE).items
        if d.metadata.labels.get("app.kubernetes.io/instance") == install.RELEASE
    )
    assert deployment.spec.replicas == 2  # one leader and a standby
    assert deployment.status.available_replicas == 2
    pods = client.CoreV1Api(api).list_namespaced_pod(install.NAMESPACE).items
    assert pods and all(p.spec.node_name.startswith("cpu-") for p in pods), [
        (p.metadata.name, p.spec.node_name) for p in pods
    ]

    custom = client.CustomObjectsApi(api)
    tiers = custom.list_cluster_custom_object("flextrain.dev", "v1alpha1", "devicetiers")["items"]
    assert {"gpu", "cpu-x86", "arm-edge"} <= {t["metadata"]["name"] for t in tiers}


def test_operator_with_the_chart_service_account_reports_device_tier_status(
    api: client.ApiClient, operator: install.OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(api)

    def matched() -> dict[str, int] | None:
        tiers = custom.list_cluster_custom_object("flextrain.dev", "v1alpha1", "devicetiers")["items"]
        counts = {t["metadata"]["name"]: t.get("status", {}).get("readyNodes") for t in tiers}
        wanted = {"gpu": 2, "cpu-x86": 3, "arm-edge": 2}
        return counts if all(counts.get(k) == v for k, v in wanted.items()) else None

    assert wait_for(matched, timeout=60, what="DeviceTier status from the operator"), operator.tail()


def test_the_operator_may_do_no_more_than_its_rules(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    installed_chart: subprocess.CompletedProcess[str],
) -> None:
    account = f"system:serviceaccount:{install.NAMESPACE}:{install.RELEASE}-flextrain"
    # (verb, resource, subresource, namespace or "" for cluster scope)
    allowed = [
        ("create", "jobs.batch", "", "default"),
        ("patch", "deployments.apps", "", "default"),
        ("update", "flextrainjobs.flextrain.dev", "finalizers", "default"),
        ("patch", "devicetiers.flextrain.dev", "status", ""),
        ("update", "leases.coordination.k8s.io", "", install.NAMESPACE),
        ("create", "leases.coordination.k8s.io", "", install.NAMESPACE),
    ]
    refused = [
        ("list", "secrets", "", "default"),
        ("delete", "jobs.batch", "", "default"),
        ("create", "pods", "", "default"),
        ("create", "clusterrolebindings", "", ""),
        ("update", "leases.coordination.k8s.io", "", "default"),
        ("list", "leases.coordination.k8s.io", "", install.NAMESPACE),
        ("delete", "leases.coordination.k8s.io", "", install.NAMESPACE),
    ]
    for verb, resource, sub, ns in allowed + refused:
        args = ["auth", "can-i", verb, resource, "--as", account]
        args += [f"--subresource={sub}"] if sub else []
        args += ["-n", ns] if ns else []
        answer = kubectl(*args, check=False).stdout.strip()
        expected = "yes" if (verb, resource, sub, ns) in allowed else "no"
        assert answer == expected, f"can-i {verb} {resource}/{sub}: {answer}, expected {expected}"


def test_an_operator_without_the_charts_rbac_is_caught(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """The 403 check of the `operator` fixture can fail: a ServiceAccount without the
    chart's bindings is refused, and the refusal is found in the operator's log."""
    client.CoreV1Api(api).create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    kubeconfig = install.token_kubeconfig(api, control_plane, "nobody", namespace, tmp_path / "kubeconfig")
    proc = install.OperatorProcess(kubeconfig, {}, tmp_path / "operator.log").start()
    try:
        denials = wait_for(proc.forbidden, timeout=60, what="an RBAC denial in the operator's log")
    finally:
        proc.stop()
    assert f"system:serviceaccount:{namespace}:nobody" in denials[0]
