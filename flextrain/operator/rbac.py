"""The operator's least-privilege RBAC, written down once: the Helm chart's
templates/_rbac.tpl is generated from these rules (`flextrain crds` writes it, `--check`
keeps it current; tests/chart renders the chart and compares), docs/operator.md lists
them.

Each rule says why the operator needs it. Notably absent: list/watch on Secrets (the
operator only creates its own and reads them by name), any verb on ConfigMaps, Roles or
PodExecs, delete on children (ownerReferences let the garbage collector remove them),
and kopf's peering resources (several replicas elect a leader with a Lease of their own,
flextrain.operator.leader, instead of kopf's peering).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Final, Literal

from flextrain.api.common import GROUP


@dataclass(frozen=True)
class Rule:
    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    #: cluster: cluster-scoped resources (always a ClusterRole); namespaced: FlexTrainJobs
    #: and their children (a ClusterRole when watching cluster-wide, else one Role per
    #: watched namespace); own-namespace: the operator's own namespace only (a Role there:
    #: the leader election's Lease).
    scope: Literal["cluster", "namespaced", "own-namespace"]
    #: always, only when the operator watches named namespaces (-n) instead of all, or
    #: only with the Kueue integration on (chart value kueue.enabled), or only when
    #: cert-manager issues the aggregators' certificates (chart tls.issuer.name).
    when: Literal["always", "namespaced-mode", "kueue", "cert-manager"] = "always"
    #: Who needs it: kopf itself, FlexTrain's handlers, or both.
    needed_by: Literal["Framework (kopf)", "Application", "Framework and application"] = (
        "Application"
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiGroups": [self.api_group],
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


RULES: Final[tuple[Rule, ...]] = (
    # Framework (kopf).
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf discovers the FlexTrain CRDs and notices when they are (re)installed",
        "cluster",
        needed_by="Framework (kopf)",
    ),
    Rule(
        "",
        ("namespaces",),
        ("list", "watch"),
        "kopf lists namespaces when it serves named ones (-n), to notice them come and go; "
        "without it, it retries the 403 for about a minute before it starts",
        "cluster",
        when="namespaced-mode",
        needed_by="Framework (kopf)",
    ),
    # Cluster-scoped application resources.
    Rule(
        GROUP,
        ("devicetiers",),
        ("get", "list", "watch"),
        "DeviceTiers place trainers and size depth: auto",
        "cluster",
    ),
    Rule(
        GROUP,
        ("devicetiers/status",),
        ("get", "patch"),
        "matching Ready nodes and their allocatable resources",
        "cluster",
    ),
    Rule(
        "",
        ("nodes",),
        ("get", "list", "watch"),
        "which DeviceTiers match Ready nodes, and their capacity",
        "cluster",
    ),
    # Namespaced application resources.
    Rule(
        GROUP,
        ("flextrainjobs",),
        ("get", "list", "watch", "patch", "delete"),
        "the jobs; patch: kopf's finalizer and annotations; delete: ttlSecondsAfterFinished",
        "namespaced",
    ),
    Rule(
        GROUP,
        ("flextrainjobs/finalizers",),
        ("update",),
        "children name their job in ownerReferences with blockOwnerDeletion: true, which "
        "the OwnerReferencesPermissionEnforcement admission plugin allows only to those who "
        "may update the job's finalizers",
        "namespaced",
    ),
    Rule(
        GROUP,
        ("flextrainjobs/status",),
        ("get", "patch"),
        "phase, rounds, accuracy, conditions",
        "namespaced",
    ),
    Rule(
        "",
        ("secrets",),
        ("get", "create", "patch"),
        "the per-job Secret (token, tier keys, TLS chain): created once, read by name (never "
        "listed); patched to renew the aggregator's certificate and to add what a Secret made by "
        "an older version lacks; with cert-manager, its Secret's ca.crt read by name",
        "namespaced",
    ),
    Rule(
        "cert-manager.io",
        ("certificates",),
        ("get", "create"),
        "with a cert-manager issuer: the aggregator's Certificate, created once (get: it "
        "exists already after an operator restart)",
        "namespaced",
        when="cert-manager",
    ),
    Rule(
        "",
        ("services",),
        ("get", "list", "watch", "create"),
        "the aggregator's Service",
        "namespaced",
    ),
    Rule(
        "networking.k8s.io",
        ("networkpolicies",),
        ("get", "list", "watch", "create"),
        "the aggregator's NetworkPolicy",
        "namespaced",
    ),
    Rule(
        "",
        ("persistentvolumeclaims",),
        ("get", "list", "watch", "create"),
        "the job's checkpoint claim (it goes with the job: ownerReference)",
        "namespaced",
    ),
    Rule(
        "policy",
        ("poddisruptionbudgets",),
        ("get", "list", "watch", "create"),
        "the aggregator's PodDisruptionBudget",
        "namespaced",
    ),
    Rule(
        "apps",
        ("deployments",),
        ("get", "list", "watch", "create", "patch"),
        "the aggregator; patch: replicas (stop at the end, suspend with a checkpoint claim)",
        "namespaced",
    ),
    Rule(
        "batch",
        ("jobs",),
        ("get", "list", "watch", "create", "patch"),
        "one Indexed Job per tier; patch: spec.suspend",
        "namespaced",
    ),
    Rule(
        "",
        ("pods",),
        ("list", "watch"),
        "trainer pods that cannot be scheduled make the job Degraded",
        "namespaced",
    ),
    # Kueue (kueue.enabled): jobs with spec.queueName.
    Rule(
        "kueue.x-k8s.io",
        ("resourceflavors",),
        ("get",),
        "the node labels and tolerations of the ResourceFlavors a job's Workload was "
        "admitted with, read once per admission (never listed)",
        "cluster",
        when="kueue",
    ),
    Rule(
        "kueue.x-k8s.io",
        ("workloads",),
        ("get", "list", "watch", "create", "patch"),
        "one Workload per job with spec.queueName: Kueue admits all its tiers at once; patch: "
        "spec.active (spec.suspend)",
        "namespaced",
        when="kueue",
    ),
    Rule(
        "kueue.x-k8s.io",
        ("workloads/status",),
        ("patch",),
        "condition Finished when the job ends (Kueue releases its quota), and the quota given "
        "back after an eviction once the job's pods stopped",
        "namespaced",
        when="kueue",
    ),
    Rule(
        "",
        ("events",),
        ("create",),
        "Events on FlexTrainJobs (the operator's and kopf's)",
        "namespaced",
        needed_by="Framework and application",
    ),
    # The operator's own namespace.
    Rule(
        "coordination.k8s.io",
        ("leases",),
        ("get", "create", "update"),
        "leader election between the operator's replicas: the Lease is read, created once "
        "and renewed with optimistic concurrency (update carries the resourceVersion read); "
        "never listed, watched or deleted",
        "own-namespace",
    ),
)


def _applies(rule: Rule, *, cluster_wide: bool, kueue: bool, cert_manager: bool) -> bool:
    if rule.when == "namespaced-mode":
        return not cluster_wide
    if rule.when == "kueue":
        return kueue
    if rule.when == "cert-manager":
        return cert_manager
    return True


def rules(
    scope: Literal["cluster", "namespaced", "own-namespace"] | None = None,
    *,
    cluster_wide: bool = True,
    kueue: bool = False,
    cert_manager: bool = False,
) -> list[dict[str, Any]]:
    """The rules as RBAC PolicyRule dicts, optionally only one scope, for an operator that
    watches all namespaces (cluster_wide) or named ones, with or without Kueue and cert-manager. No scope:
    the cluster and namespaced ones (what the ClusterRole of a cluster-wide operator
    holds); the own-namespace rules only when asked for."""
    return [
        r.to_dict()
        for r in RULES
        if (r.scope == scope if scope is not None else r.scope != "own-namespace")
        and _applies(r, cluster_wide=cluster_wide, kueue=kueue, cert_manager=cert_manager)
    ]


def cluster_role(
    name: str,
    *,
    cluster_wide: bool = True,
    kueue: bool = False,
    cert_manager: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ClusterRole: every rule when watching cluster-wide, else the cluster-scoped ones
    (events on cluster-scoped DeviceTiers land in `default`, so `events` comes along)."""
    picked = (
        rules(kueue=kueue, cert_manager=cert_manager)
        if cluster_wide
        else [
            *rules("cluster", cluster_wide=False, kueue=kueue),
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ]
    )
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "rules": picked,
    }


def role(
    name: str,
    namespace: str,
    *,
    kueue: bool = False,
    cert_manager: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Role with the namespaced rules, for one watched namespace."""
    return _role(name, namespace, labels, rules("namespaced", kueue=kueue, cert_manager=cert_manager))


def leader_election_role(name: str, namespace: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The Role in the operator's own namespace for its leader election (the Lease)."""
    return _role(name, namespace, labels, rules("own-namespace"))


def _role(name: str, namespace: str, labels: dict[str, str] | None, granted: list[dict[str, Any]]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": granted}


# -- the chart's copy -------------------------------------------------------------------

CHART_TEMPLATE: Final[str] = "charts/flextrain/templates/_rbac.tpl"


def _yaml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _template_rule(rule: Rule) -> list[str]:
    why = textwrap.wrap(f"{rule.needed_by}: {rule.why}.", 86)
    return [
        *(f"# {line}" for line in why),
        f'- apiGroups: ["{rule.api_group}"]',
        f"  resources: {_yaml_list(rule.resources)}",
        f"  verbs: {_yaml_list(rule.verbs)}",
    ]


def _guarded(rule: Rule) -> list[str]:
    """The rule in the template, inside the `if` of the values it depends on."""
    body = _template_rule(rule)
    if rule.when == "namespaced-mode":
        return ["{{- if not .Values.watch.clusterWide }}", *body, "{{- end }}"]
    if rule.when == "kueue":
        return ["{{- if .Values.kueue.enabled }}", *body, "{{- end }}"]
    if rule.when == "cert-manager":
        return ["{{- if .Values.tls.issuer.name }}", *body, "{{- end }}"]
    return body


def chart_template() -> str:
    """templates/_rbac.tpl: the rules as the named templates rbac.yaml includes
    (flextrain.clusterRules, flextrain.namespacedRules, flextrain.eventRules)."""
    events = [r for r in RULES if r.resources == ("events",)]
    cluster: list[str] = []
    for rule in (r for r in RULES if r.scope == "cluster"):
        cluster += _guarded(rule)
    namespaced = [
        line
        for rule in RULES
        if rule.scope == "namespaced" and rule not in events
        for line in _guarded(rule)
    ]
    lines = [
        "{{/*",
        "Generated by `flextrain crds` from flextrain/operator/rbac.py; do not edit by hand.",
        "The operator's RBAC rules, each with why it is needed. Not granted on purpose:",
        "delete on children (their ownerReferences let the garbage collector remove them),",
        "list/watch on Secrets (the operator reads its own token Secret by name), kopf's",
        "peering resources (replicas elect a leader with a Lease of their own).",
        "*/}}",
        "",
        "{{/* Rules on cluster-scoped resources: always in a ClusterRole. */}}",
        '{{- define "flextrain.clusterRules" -}}',
        *cluster,
        "{{- end }}",
        "",
        "{{/* Rules on FlexTrainJobs and their children: a ClusterRole when watching",
        "cluster-wide, else one Role per watched namespace. */}}",
        '{{- define "flextrain.namespacedRules" -}}',
        *namespaced,
        '{{ include "flextrain.eventRules" . }}',
        "{{- end -}}",
        "",
        "{{/* Events: the operator's own on FlexTrainJobs and kopf's. */}}",
        '{{- define "flextrain.eventRules" -}}',
        *(line for rule in events for line in _template_rule(rule)),
        "{{- end }}",
        "",
        "{{/* The operator's own namespace: a Role there (leader election). */}}",
        '{{- define "flextrain.ownNamespaceRules" -}}',
        *(line for rule in RULES if rule.scope == "own-namespace" for line in _template_rule(rule)),
        "{{- end }}",
    ]
    return "\n".join(lines) + "\n"
