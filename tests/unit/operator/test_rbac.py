"""The least-privilege rules cover every API call the operator makes, and nothing more
than the documented set."""

from __future__ import annotations

import ast
from pathlib import Path

import kubernetes_validate

from flextrain.operator import rbac
from flextrain.operator.kube import KINDS

SRC = Path(__file__).resolve().parents[3] / "flextrain" / "operator"


def _allowed(group: str, resource: str, verb: str) -> bool:
    return any(
        r.api_group == group and resource in r.resources and verb in r.verbs for r in rbac.RULES
    )


def test_every_verb_the_operator_uses_is_granted() -> None:
    needed = [
        ("", "secrets", "create"),
        ("", "secrets", "get"),
        ("", "services", "create"),
        ("apps", "deployments", "create"),
        ("apps", "deployments", "patch"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "patch"),
        ("", "events", "create"),
        ("flextrain.dev", "flextrainjobs/status", "patch"),
        ("flextrain.dev", "devicetiers/status", "patch"),
        ("flextrain.dev", "flextrainjobs", "delete"),
        ("flextrain.dev", "flextrainjobs", "patch"),
        # children's ownerReferences block the job's deletion (blockOwnerDeletion: true)
        ("flextrain.dev", "flextrainjobs/finalizers", "update"),
    ]
    # what kopf watches (list + watch): the indices and the daemon's resource
    for group, resource in [
        ("flextrain.dev", "flextrainjobs"),
        ("flextrain.dev", "devicetiers"),
        ("", "nodes"),
        ("batch", "jobs"),
        ("apps", "deployments"),
        ("", "services"),
        ("", "pods"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    ]:
        needed += [(group, resource, "list"), (group, resource, "watch")]
    missing = [n for n in needed if not _allowed(*n)]
    assert missing == []


def test_secrets_are_never_listed_and_children_never_deleted() -> None:
    assert not _allowed("", "secrets", "list") and not _allowed("", "secrets", "watch")
    for group, resource in [
        ("batch", "jobs"),
        ("apps", "deployments"),
        ("", "services"),
        ("", "secrets"),
    ]:
        assert not _allowed(group, resource, "delete")
    assert not any("*" in r.verbs or "*" in r.resources for r in rbac.RULES)


def test_the_api_client_only_touches_known_kinds() -> None:
    granted = {res.split("/")[0] for r in rbac.RULES for res in r.resources}
    assert {plural for plural, _ in KINDS.values()} <= granted


def test_rendered_roles_are_valid_kubernetes_objects() -> None:
    for obj in (
        rbac.cluster_role("flextrain-operator"),
        rbac.cluster_role("flextrain-operator", cluster_wide=False),
        rbac.role("flextrain-operator", "team-a"),
    ):
        kubernetes_validate.validate(obj, "1.37", strict=True)
    namespaced = rbac.role("x", "ns")["rules"]
    assert all(r["resources"][0] not in ("nodes", "devicetiers") for r in namespaced)


def test_only_handlers_imports_kopf() -> None:
    for path in SRC.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        imported |= {
            (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
        }
        assert ("kopf" in imported) is (path.name == "handlers.py"), path.name


def test_kueue_rules_come_only_with_the_kueue_integration() -> None:
    def kueue_resources(rules: list[dict[str, object]]) -> set[str]:
        return {res for r in rules if r["apiGroups"] == ["kueue.x-k8s.io"] for res in r["resources"]}  # type: ignore[attr-defined]

    assert kueue_resources(rbac.cluster_role("x")["rules"]) == set()
    assert kueue_resources(rbac.role("x", "ns")["rules"]) == set()
    everything = {"workloads", "workloads/status", "resourceflavors"}
    assert kueue_resources(rbac.cluster_role("x", kueue=True)["rules"]) == everything
    assert kueue_resources(rbac.cluster_role("x", cluster_wide=False, kueue=True)["rules"]) == {"resourceflavors"}
    assert kueue_resources(rbac.role("x", "ns", kueue=True)["rules"]) == {"workloads", "workloads/status"}
    for obj in (rbac.cluster_role("x", kueue=True), rbac.role("x", "ns", kueue=True)):
        kubernetes_validate.validate(obj, "1.37", strict=True)
    # What the Kueue path calls: create/watch/patch its Workload, patch its status, get flavors.
    for needed in [
        ("kueue.x-k8s.io", "workloads", "create"),
        ("kueue.x-k8s.io", "workloads", "list"),
        ("kueue.x-k8s.io", "workloads", "watch"),
        ("kueue.x-k8s.io", "workloads", "patch"),
        ("kueue.x-k8s.io", "workloads/status", "patch"),
        ("kueue.x-k8s.io", "resourceflavors", "get"),
    ]:
        assert _allowed(*needed), needed
    assert not _allowed("kueue.x-k8s.io", "workloads", "delete")


def test_namespaces_are_listed_only_in_namespaced_mode() -> None:
    def has_namespaces(rules: list[dict[str, object]]) -> bool:
        return any("namespaces" in r["resources"] for r in rules)  # type: ignore[operator]

    assert not has_namespaces(rbac.cluster_role("x")["rules"])
    assert has_namespaces(rbac.cluster_role("x", cluster_wide=False)["rules"])
    assert not has_namespaces(rbac.role("x", "ns")["rules"])


def test_the_chart_s_rbac_template_is_generated_from_the_rules() -> None:
    from tests.tools import REPO

    text = (REPO / rbac.CHART_TEMPLATE).read_text()
    assert text == rbac.chart_template(), f"{rbac.CHART_TEMPLATE} is stale: run `flextrain crds`"
    for rule in rbac.RULES:
        assert f"resources: [\"{rule.resources[0]}\"]" in text


def test_leases_are_granted_only_in_the_operators_own_namespace() -> None:
    """The leader election's Lease: get, create, update in a Role of the operator's
    namespace; never in the ClusterRole, never list, watch or delete."""
    role = rbac.leader_election_role("ft-flextrain-leader-election", "flextrain-system")
    kubernetes_validate.validate(role, "1.37", strict=True)
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    for cluster_wide in (True, False):
        rules = rbac.cluster_role("x", cluster_wide=cluster_wide)["rules"]
        assert not any("leases" in r["resources"] for r in rules)
    assert not any("leases" in r["resources"] for r in rbac.role("x", "team-a")["rules"])
