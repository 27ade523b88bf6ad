"""The chart grants the operator exactly the rules of flextrain/operator/rbac.py, covers
every resource kopf watches, and is enough for the real operator: run against an emulator
that enforces the rendered RBAC, a job goes from creation to TTL deletion without a single
403."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from flextrain.operator import handlers, names, rbac
from flextrain.operator.config import OperatorSettings
from tests.chart.chart import (
    CHART,
    CI_VALUES,
    Tools,
    documents,
    env_of,
    of_kind,
    one,
    operator_container,
    run,
    value_args,
)
from tests.chart.rbac_emulator import Grants, RbacEmulator, permissions
from tests.factories import make_job
from tests.integration.operator_harness import (
    DT,
    FAST,
    FTJ,
    NS,
    Cluster,
    eventually,
    node,
    running_operator,
)

pytestmark = pytest.mark.timeout(60)

Render = Callable[..., str]
CI = {path.stem: path for path in CI_VALUES}
MODES = [
    pytest.param((), None, id="cluster-wide"),
    pytest.param((CI["namespaced-values"],), ["ml-line-1", "ml-line-2"], id="namespaced"),
    pytest.param((CI["kueue-values"],), ["ml-queued"], id="kueue"),
    pytest.param((CI["cert-manager-values"],), None, id="cert-manager"),
]


def service_account(docs: list[dict[str, Any]]) -> tuple[str, str]:
    deployment = one(docs, "Deployment")
    return deployment["metadata"]["namespace"], deployment["spec"]["template"]["spec"]["serviceAccountName"]


@pytest.mark.parametrize(("values", "namespaces"), MODES)
def test_rendered_rules_are_the_operators_rules(
    render: Render, values: tuple[Path, ...], namespaces: list[str] | None
) -> None:
    docs = documents(render(*values))
    # The operator's (the users' roles, component user-role, are tests/chart/test_user_roles.py's).
    [cluster_role] = [r for r in of_kind(docs, "ClusterRole")
                      if r["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    name = cluster_role["metadata"]["name"]
    env = env_of(operator_container(docs))
    kueue = env.get("FLEXTRAIN_OPERATOR_KUEUE") == "true"
    assert kueue is (CI["kueue-values"] in values)
    cert_manager = bool(env.get("FLEXTRAIN_OPERATOR_TLS_ISSUER_NAME"))
    assert cert_manager is (CI["cert-manager-values"] in values)
    expected = rbac.cluster_role(name, cluster_wide=namespaces is None, kueue=kueue, cert_manager=cert_manager)
    assert permissions(cluster_role["rules"]) == permissions(expected["rules"])
    roles = {r["metadata"]["namespace"]: r for r in of_kind(docs, "Role") if r["metadata"]["name"] == name}
    assert sorted(roles) == sorted(namespaces or [])
    for namespace, role in roles.items():
        assert permissions(role["rules"]) == permissions(rbac.role(name, namespace, kueue=kueue, cert_manager=cert_manager)["rules"])
    # The leader election's Role, in the operator's own namespace.
    [lease_role] = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] != name]
    release_ns = lease_role["metadata"]["namespace"]
    assert permissions(lease_role["rules"]) == permissions(rbac.leader_election_role("x", release_ns)["rules"])
    # ... and every role is bound to the operator's ServiceAccount.
    grants = Grants.of(docs, *service_account(docs))
    assert grants.cluster == permissions(expected["rules"])
    expected_namespaced = {ns: permissions(rbac.rules("namespaced", kueue=kueue, cert_manager=cert_manager)) for ns in namespaces or []}
    expected_namespaced.setdefault(release_ns, set()).update(permissions(rbac.rules("own-namespace")))
    assert grants.namespaced == expected_namespaced
    # Kueue's API only with the integration on: Workloads where jobs live, flavors cluster-wide.
    where = namespaces[0] if namespaces else None
    assert grants.allows("kueue.x-k8s.io", "workloads", "watch", where) is kueue
    assert grants.allows("kueue.x-k8s.io", "workloads/status", "patch", where) is kueue
    assert grants.allows("kueue.x-k8s.io", "resourceflavors", "get", None) is kueue
    assert not grants.allows("kueue.x-k8s.io", "resourceflavors", "list", None)
    # Certificates only where cert-manager issues them.
    assert grants.allows("cert-manager.io", "certificates", "create", where) is cert_manager


def test_framework_and_application_rules_are_commented_apart(render: Render) -> None:
    text = render()
    start = text.index("kind: ClusterRole\n")
    rules = text[text.index("rules:", start):text.index("---", start)]
    blocks = re.findall(r"((?:\s*#[^\n]*\n)+)\s*- apiGroups: \[([^\]]*)\]\n\s*resources: \[([^\]]*)\]", rules)
    # default: cluster-wide (the Lease's rule is in a Role of its own)
    assert len(blocks) == len([r for r in rbac.RULES if r.when == "always" and r.scope != "own-namespace"])
    for comment, _group, resources in blocks:
        kind = comment.strip().splitlines()[0]
        if "customresourcedefinitions" in resources:
            assert kind.startswith("# Framework (kopf)"), comment
        elif "events" in resources:
            assert kind.startswith("# Framework and application"), comment
        else:
            assert kind.startswith("# Application"), comment


def _kopf_resources() -> dict[tuple[str, str], set[str]]:
    """(group, plural) -> verbs kopf needs for every resource the handlers registry names:
    list + watch for indexes, event handlers and daemons; patch where kopf keeps
    finalizers and annotations (daemons)."""
    needs: dict[tuple[str, str], set[str]] = {}
    registry = handlers.REGISTRY
    for part, verbs in ((registry._indexing, {"list", "watch"}), (registry._watching, {"list", "watch"}),
                        (registry._spawning, {"list", "watch", "patch"}),
                        (registry._changing, {"list", "watch", "patch"})):
        for handler in part.get_all_handlers():
            selector = handler.selector
            assert selector is not None, f"{handler.id}: no resource"
            plural = selector.plural or selector.any_name
            assert isinstance(plural, str), f"{handler.id}: cannot tell its resource"
            needs.setdefault((str(selector.group or ""), plural), set()).update(verbs)
    return needs


@pytest.mark.parametrize(("values", "namespaces"), MODES)
def test_every_resource_kopf_watches_is_granted(
    render: Render, values: tuple[Path, ...], namespaces: list[str] | None
) -> None:
    docs = documents(render(*values))
    grants = Grants.of(docs, *service_account(docs))
    cluster_scoped = {("", "nodes"), ("flextrain.dev", "devicetiers")}
    needs = _kopf_resources()
    assert ("flextrain.dev", "flextrainjobs") in needs
    for (group, plural), verbs in needs.items():
        for verb in verbs:
            where = [None] if namespaces is None or (group, plural) in cluster_scoped else namespaces
            for namespace in where:
                assert grants.allows(group, plural, verb, namespace), (group, plural, verb, namespace)


def test_namespaced_watching_lets_kopf_list_namespaces(render: Render) -> None:
    """kopf lists Namespaces when it serves named ones; without the grant it would retry
    the 403 for about a minute before starting."""
    docs = documents(render(CI["namespaced-values"]))
    grants = Grants.of(docs, *service_account(docs))
    assert grants.allows("", "namespaces", "list", None)
    assert grants.allows("", "namespaces", "watch", None)


# -- the real operator under the chart's RBAC ---------------------------------------------


@asynccontextmanager
async def enforcing_cluster(tmp: Path, grants: Grants) -> AsyncIterator[Cluster]:
    async with RbacEmulator(grants=grants) as api, kmock.Server(api) as server:
        url = str(server.url).rstrip("/")
        config = tmp / "kubeconfig"
        config.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "emulator", "cluster": {"server": url}}],
            # the operator's ServiceAccount token: its requests are the ones authorised
            "users": [{"name": "operator", "user": {"token": api.token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "emulator", "user": "operator"}}],
        }))
        yield Cluster(api, config, url)


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "namespaced"])
async def test_the_operator_runs_a_job_to_its_end_within_the_charts_rbac(
    tools: Tools, tmp_path: Path, namespaced: bool
) -> None:
    values = {"watch": {"clusterWide": not namespaced, "namespaces": [NS]},
              "deviceTiers": {"enabled": True}}
    proc = run([tools.helm, "template", "ft", CHART, "--namespace", "flextrain-system",
                *value_args([values], tmp_path)])
    assert proc.returncode == 0, proc.stderr
    docs = documents(proc.stdout)
    # The operator as the chart configures it: its flags and FLEXTRAIN_OPERATOR_* settings
    # (timings shortened so the test takes seconds).
    container = operator_container(docs)
    settings = OperatorSettings.from_env(env_of(container))
    watched = tuple(a.split("=", 1)[1] for a in container["args"] if a.startswith("--namespace="))
    assert watched == ((NS,) if namespaced else ())
    settings = dataclasses.replace(
        settings, namespaces=watched, status_interval=FAST.status_interval,
        status_timeout=FAST.status_timeout, tier_debounce=FAST.tier_debounce,
        finish_grace=FAST.finish_grace, self_metrics_port=0)

    async with enforcing_cluster(tmp_path, Grants.of(docs, *service_account(docs))) as cluster:
        api = cluster.api
        assert isinstance(api, RbacEmulator)
        await cluster.create(node("gpu-1", {"nvidia.com/gpu.present": "true"}, gpus=2,
                                  taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]))
        await cluster.create(node("cpu-1", {"flextrain.dev/pool": "cpu"}, cpu="16", memory="64Gi"))
        for tier in of_kind(docs, "DeviceTier"):  # the chart's default tiers
            await cluster.create(tier)
        async with running_operator(cluster, settings):
            await cluster.create(make_job("train", activeDeadlineSeconds=1, ttlSecondsAfterFinished=1,
                                          tiers=[{"name": "deep", "deviceTierRef": "gpu", "replicas": 1, "depth": 9},
                                                 {"name": "weak", "deviceTierRef": "cpu-x86", "replicas": 2, "depth": "auto"}]))
            await eventually(lambda: (cluster.get(DT, "gpu", None) or {}).get("status", {}).get("readyNodes") == 1,
                             what="DeviceTier status", timeout=20)
            await eventually(lambda: cluster.condition("train", "Failed"), what="the deadline to fail the job", timeout=20)
            await eventually(lambda: cluster.get(FTJ, "train") is None, what="TTL deletion", timeout=20)
        # Serving named namespaces, kopf also lists and watches Namespaces, which the rules
        # do not grant (see test_namespaced_watching_lets_kopf_list_namespaces). Nothing
        # else may be refused.
        kopf_namespaces = {"list core/namespaces cluster-wide", "watch core/namespaces cluster-wide"}
        refused = [d for d in api.denied if not (namespaced and d in kopf_namespaces)]
        assert refused == [], f"the chart's RBAC refused the operator: {refused}"
        used = {(g, r, v) for g, r, v, _ in api.used}
        # the enforcement saw the operator's own calls, not only kopf's watches
        for call in (("batch", "jobs", "create"), ("apps", "deployments", "create"),
                     ("", "secrets", "create"), ("flextrain.dev", "flextrainjobs/status", "patch"),
                     ("flextrain.dev", "devicetiers/status", "patch"), ("", "events", "create"),
                     ("flextrain.dev", "flextrainjobs", "delete")):
            assert call in used, (call, sorted(used))


@pytest.mark.parametrize(("values", "namespaces"), MODES)
def test_children_may_block_their_jobs_deletion(
    render: Render, values: tuple[Path, ...], namespaces: list[str] | None
) -> None:
    """Children carry ownerReferences with blockOwnerDeletion: true; with the
    OwnerReferencesPermissionEnforcement admission plugin (on in most clusters) creating
    them needs update on flextrainjobs/finalizers where the job lives."""
    docs = documents(render(*values))
    grants = Grants.of(docs, *service_account(docs))
    owner = names.owner_reference("FlexTrainJob", "j", "uid")
    assert owner["blockOwnerDeletion"] is True
    for namespace in namespaces or ["any-namespace"]:
        assert grants.allows("flextrain.dev", "flextrainjobs/finalizers", "update", namespace)
