"""The chart runs the operator as replicas with leader election by default: a rolling
update, a Lease Role in the release namespace, a disruption budget and a preferred spread
across nodes; one replica without election is a Recreate Deployment, and more replicas
without election are refused. (The election itself runs against the real API server in
tests/cluster/test_leader_election.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flextrain.operator import rbac
from flextrain.operator.config import OperatorSettings
from tests.chart.chart import (
    CHART,
    NAMESPACE,
    Tools,
    documents,
    env_of,
    of_kind,
    one,
    operator_container,
    run,
    template,
    value_args,
)
from tests.chart.rbac_emulator import Grants, permissions

pytestmark = pytest.mark.timeout(120)


def render(tools: Tools, tmp: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return documents(template(tools, path))


def test_by_default_two_replicas_roll_with_a_lease_a_budget_and_a_spread(tools: Tools, tmp_path: Path) -> None:
    docs = render(tools, tmp_path, {})
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    settings = OperatorSettings.from_env(env_of(operator_container(docs)))
    assert settings.leader_election and settings.leader_election_lease == "ft-flextrain-leader"
    # The Lease's Role, in the release namespace only, bound to the operator's account.
    pod = spec["template"]["spec"]
    grants = Grants.of(docs, NAMESPACE, pod["serviceAccountName"])
    assert grants.namespaced == {NAMESPACE: permissions(rbac.rules("own-namespace"))}
    assert grants.allows("coordination.k8s.io", "leases", "update", NAMESPACE)
    assert not grants.allows("coordination.k8s.io", "leases", "update", "team-a")
    assert not any(grants.allows("coordination.k8s.io", "leases", verb, NAMESPACE) for verb in ("list", "watch", "delete"))
    # At most one pod drained at a time, and the selectors pick the operator's pods.
    [budget] = [d for d in of_kind(docs, "PodDisruptionBudget") if d["metadata"]["namespace"] == NAMESPACE]
    assert budget["spec"]["maxUnavailable"] == 1
    labels = spec["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_one_replica_without_election_is_recreated_and_has_no_lease_role(tools: Tools, tmp_path: Path) -> None:
    docs = render(tools, tmp_path, {"operator": {"replicas": 1, "leaderElection": {"enabled": False}}})
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert "affinity" not in spec["template"]["spec"]
    assert not of_kind(docs, "PodDisruptionBudget") and not of_kind(docs, "Role")
    assert not OperatorSettings.from_env(env_of(operator_container(docs))).leader_election


def test_one_replica_with_election_keeps_the_lease_but_needs_no_budget(tools: Tools, tmp_path: Path) -> None:
    """A single replica still elects (an update's new pod stands by until the old one
    releases), but a budget would block every node drain."""
    docs = render(tools, tmp_path, {"operator": {"replicas": 1}})
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not of_kind(docs, "PodDisruptionBudget")
    assert [r["metadata"]["name"] for r in of_kind(docs, "Role")] == ["ft-flextrain-leader-election"]


def test_the_users_affinity_wins_over_the_default_spread(tools: Tools, tmp_path: Path) -> None:
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "role", "operator": "In", "values": ["control"]}]}]}}}
    docs = render(tools, tmp_path, {"affinity": mine})
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["affinity"] == mine


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}},
         "operator.replicas > 1 needs operator.leaderElection.enabled"),
        ({"operator": {"leaderElection": {"renewDeadline": 15}}}, "renewDeadline must be less than leaseDuration"),
        ({"operator": {"leaderElection": {"retryPeriod": 10}}}, "retryPeriod must be less than renewDeadline"),
        ({"operator": {"replicas": 0}}, "/operator/replicas"),
        ({"operator": {"leaderElection": {"leaseDuration": 1.5}}}, "/operator/leaderElection/leaseDuration"),
        ({"operator": {"leaderElection": {"leaseDurationSeconds": 15}}}, "'leaseDurationSeconds'"),
    ],
)
def test_helm_refuses_unsafe_election_values(tools: Tools, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    proc = run([tools.helm, "template", "ft", CHART, *value_args([values], tmp_path)])
    assert proc.returncode != 0, f"accepted {values}"
    assert message in proc.stderr, proc.stderr
