"""The free-form Kubernetes objects of the values (securityContext, podSecurityContext,
affinity, tolerations, nodeSelector): values.schema.json refuses wrong fields and types
at `helm install` (tests/chart/test_values.py), and what the chart renders from a
user's objects is valid Kubernetes down to the last field (kubernetes-validate --strict,
the Kubernetes 1.37 schemas). tests/cluster/test_install_guide.py sends the same render
to the real API server as a server-side dry run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import CHART, Tools, documents, one, run, value_args

pytestmark = pytest.mark.timeout(120)

KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
SCHEDULING = CHART / "ci" / "scheduling-values.yaml"


def render(tools: Tools, tmp: Path, *values: dict[str, Any] | Path) -> tuple[int, str, str]:
    proc = run([tools.helm, "template", "ft", CHART, *value_args(values, tmp)])
    return proc.returncode, proc.stdout, proc.stderr


def operator_deployment(tools: Tools, tmp: Path, *values: dict[str, Any] | Path) -> tuple[str, dict[str, Any]]:
    code, out, err = render(tools, tmp, *values)
    assert code == 0, err
    return out, one(documents(out), "Deployment")


def validate(text: str) -> tuple[int, str]:
    """kubernetes-validate --strict of the operator Deployment only (the kinds it knows)."""
    deployment = yaml.safe_dump(one(documents(text), "Deployment"))
    proc = run([KUBERNETES_VALIDATE, "--strict", "-"], stdin=deployment)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_users_objects_reach_the_operator_pod_and_validate(tools: Tools, tmp_path: Path) -> None:
    written = yaml.safe_load(SCHEDULING.read_text())
    text, deployment = operator_deployment(tools, tmp_path, SCHEDULING)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["affinity"] == written["affinity"]
    assert pod["tolerations"] == written["tolerations"]
    assert pod["nodeSelector"] == written["nodeSelector"]
    assert pod["securityContext"] == written["podSecurityContext"]
    assert pod["containers"][0]["securityContext"] == written["securityContext"]
    code, output = validate(text)
    assert code == 0 and " passed for resource " in output, output


@pytest.mark.parametrize(("values", "field"), [
    pytest.param({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpresions": [{"key": "a", "operator": "Exists"}]}]}}}},
        "matchExpresions", id="misspelt-term-field"),
    pytest.param({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "podAffinityTerm": {"labelSelector": {}}}]}}},
        "topologyKey", id="term-without-topology-key"),
])
def test_deep_mistakes_the_values_schema_lets_through_fail_kubernetes_validation(
    tools: Tools, tmp_path: Path, values: dict[str, Any], field: str
) -> None:
    """values.schema.json stops at the affinity rule lists; below them the Kubernetes
    schema finds the mistake in the render."""
    text, _ = operator_deployment(tools, tmp_path, values)
    code, output = validate(text)
    assert code != 0, output
    assert field in output, output
