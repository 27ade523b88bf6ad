"""The rendered chart, applied with the real kubectl to the kmock API server emulator
(tests/integration/kube_emulator.py): every object is created, a second apply changes
nothing, and an apply with other values (an upgrade) patches the operator Deployment.

kubectl runs with --validate=false: the emulator serves no OpenAPI documents, and the
schemas are checked offline by kubernetes-validate and the CRD checks in test_chart.py.
The Prometheus Operator's ServiceMonitor CRD is applied first, as on a real cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.chart.chart import CI_VALUES, NAMESPACE, TIMEOUT, Tools, documents
from tests.integration.kube_emulator import KubeEmulator
from tests.integration.operator_harness import kubeconfig

pytestmark = pytest.mark.timeout(60)

Render = Callable[..., str]
VALUE_SETS = [
    pytest.param((), id="defaults"),
    *(pytest.param((path,), id=path.stem) for path in CI_VALUES),
]
#: The Prometheus Operator's CRD, reduced to what registers the kind.
SERVICE_MONITOR_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""
#: kind -> the emulator's resource name (group/version/plural).
RESOURCES = {
    "ServiceAccount": "v1/serviceaccounts",
    "Service": "v1/services",
    "ClusterRole": "rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "rbac.authorization.k8s.io/v1/roles",
    "RoleBinding": "rbac.authorization.k8s.io/v1/rolebindings",
    "Deployment": "apps/v1/deployments",
    "PodDisruptionBudget": "policy/v1/poddisruptionbudgets",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1/customresourcedefinitions",
    "DeviceTier": "flextrain.dev/v1alpha1/devicetiers",
    "ServiceMonitor": "monitoring.coreos.com/v1/servicemonitors",
    "ValidatingAdmissionPolicy": "admissionregistration.k8s.io/v1/validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
}


class Kubectl:
    def __init__(self, binary: Path, config: Path) -> None:
        self.binary, self.config = binary, config

    async def __call__(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(self.binary), f"--kubeconfig={self.config}", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return int(proc.returncode or 0), out.decode()

    async def apply(self, path: Path) -> str:
        code, out = await self("apply", "--validate=false", "-f", str(path))
        assert code == 0, out
        return out


@asynccontextmanager
async def cluster(tools: Tools, tmp: Path) -> AsyncIterator[tuple[KubeEmulator, Kubectl]]:
    async with KubeEmulator() as api, kmock.Server(api) as server:
        kubectl = Kubectl(tools.kubectl, kubeconfig(tmp / "kubeconfig", str(server.url).rstrip("/")))
        crd = tmp / "servicemonitor-crd.yaml"
        crd.write_text(SERVICE_MONITOR_CRD)
        await kubectl.apply(crd)
        yield api, kubectl


def stored(api: KubeEmulator, obj: dict[str, Any]) -> dict[str, Any] | None:
    return api.get(RESOURCES[obj["kind"]], obj["metadata"].get("namespace"), obj["metadata"]["name"])


@pytest.mark.parametrize("values", VALUE_SETS)
async def test_kubectl_apply_creates_every_object_and_reapplying_changes_nothing(
    tools: Tools, render: Render, tmp_path: Path, values: tuple[Path, ...]
) -> None:
    text = render(*values)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(text)
    docs = documents(text)
    assert {d["kind"] for d in docs} <= set(RESOURCES)
    async with cluster(tools, tmp_path) as (api, kubectl):
        out = await kubectl.apply(manifest)
        assert out.count(" created") == len(docs), out
        for obj in docs:
            found = stored(api, obj)
            assert found is not None, f"{obj['kind']} {obj['metadata']['name']} was not created"
            for field in ("spec", "rules", "roleRef", "subjects"):
                assert found.get(field) == obj.get(field), (obj["kind"], field)
        versions = {id(obj): stored(api, obj)["metadata"]["resourceVersion"] for obj in docs}  # type: ignore[index]
        out = await kubectl.apply(manifest)
        # kubectl always sends a PodDisruptionBudget's selector again (its patch strategy
        # is "replace") and so says "configured"; the object stays as it was all the same.
        budgets = sum(d["kind"] == "PodDisruptionBudget" for d in docs)
        assert out.count(" unchanged") == len(docs) - budgets, out
        assert all(stored(api, obj)["metadata"]["resourceVersion"] == versions[id(obj)] for obj in docs)  # type: ignore[index]


async def test_applying_other_values_upgrades_the_operator_in_place(
    tools: Tools, render: Render, tmp_path: Path
) -> None:
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(render())
    cluster_wide = next(p for p in CI_VALUES if p.stem == "cluster-wide-values")
    after.write_text(render(cluster_wide))
    async with cluster(tools, tmp_path) as (api, kubectl):
        await kubectl.apply(before)
        out = await kubectl.apply(after)
        assert "deployment.apps/ft-flextrain configured" in out, out
        deployment = api.get(RESOURCES["Deployment"], NAMESPACE, "ft-flextrain")
        assert deployment is not None
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "registry.factory.example:5000/ml/flextrain-operator:0.1.0"
        assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "factory-registry"}]
