"""The operator on the real control plane: children created once, tier pods placed by
the real kube-scheduler on their pools, Indexed pods made by the real Job controller,
children removed by the real garbage collector, suspend and resume, unschedulable tiers
explained with the scheduler's own reason, refusals (422, 403, 409) reported, and a
SIGKILLed operator that restarts without duplicating anything.

The operator runs with the chart's ServiceAccount (the `operator` fixture); the node
agent plays the kubelets in status mode (pods Running, ended when a test asks)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client

from flextrain.operator import names
from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.node_agent import NodeAgent

GROUP, VERSION, PLURAL = "flextrain.dev", "v1alpha1", "flextrainjobs"
Body = dict[str, Any]


def factory_job(name: str, namespace: str, **spec: Any) -> Body:
    """A job with one tier per pool of the chart's DeviceTiers."""
    body: Body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FlexTrainJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"family": "resnet", "layers": 20},
            "dataset": {"name": "digits", "partition": {"scheme": "iid"}},
            "training": {"rounds": 2, "localEpochs": 1, "batchSize": 32},
            "tiers": [
                {"name": "gpu", "deviceTierRef": "gpu", "replicas": 1, "depth": 9},
                {"name": "cpu", "deviceTierRef": "cpu-x86", "replicas": 2, "depth": 5},
                {"name": "edge", "deviceTierRef": "arm-edge", "replicas": 2, "depth": "auto"},
            ],
        },
    }
    body["spec"].update(spec)
    return body


@contextlib.contextmanager
def device_tier(api: client.ApiClient, name: str, **spec: Any) -> Iterator[str]:
    """A DeviceTier that exists for the `with` block (they are cluster-wide: give each test
    its own name)."""
    custom = client.CustomObjectsApi(api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceTier", "metadata": {"name": name}, "spec": spec}
    custom.create_cluster_custom_object(GROUP, VERSION, "devicetiers", body)
    try:
        yield name
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "devicetiers", name)


class Jobs:
    """FlexTrainJobs and their children in one namespace, read through the admin client."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.apps = client.AppsV1Api(api)

    def create(self, body: Body) -> Body:
        created: Body = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)
        return created

    def get(self, name: str) -> Body:
        obj: Body = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return obj

    def patch(self, name: str, body: Body) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, body)

    def condition(self, name: str, kind: str) -> Body | None:
        for cond in self.get(name).get("status", {}).get("conditions", []):
            if cond["type"] == kind:
                return dict(cond)
        return None

    def children(self, job: str) -> dict[str, list[str]]:
        """Kind -> uids of the job's children."""
        selector = f"flextrain.dev/job={names.label_value(job)}"
        return {
            "Secret": [s.metadata.uid for s in self.core.list_namespaced_secret(self.ns, label_selector=selector).items],
            "Service": [s.metadata.uid for s in self.core.list_namespaced_service(self.ns, label_selector=selector).items],
            "Deployment": [d.metadata.uid for d in self.apps.list_namespaced_deployment(self.ns, label_selector=selector).items],
            "Job": [j.metadata.uid for j in self.batch.list_namespaced_job(self.ns, label_selector=selector).items],
        }

    def trainer_pods(self, job: str) -> list[client.V1Pod]:
        selector = f"flextrain.dev/job={names.label_value(job)},flextrain.dev/component=trainer"
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def events(self, job: str) -> list[client.CoreV1Event]:
        return [
            e
            for e in self.core.list_namespaced_event(self.ns).items
            if e.involved_object.kind == "FlexTrainJob" and e.involved_object.name == job
        ]

    def all_children_created(self, job: str, tiers: int) -> dict[str, list[str]] | None:
        made = self.children(job)
        counts = {k: len(v) for k, v in made.items()}
        return made if counts == {"Secret": 1, "Service": 1, "Deployment": 1, "Job": tiers} else None


def test_tiers_run_on_their_pools_and_children_are_made_once(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("factory", namespace))
    first = wait_for(lambda: jobs.all_children_created("factory", 3), timeout=30, what="the job's children")

    def placed() -> dict[str, set[str]] | None:
        pods = jobs.trainer_pods("factory")
        if len(pods) < 5 or any(not p.spec.node_name for p in pods):
            return None
        by_tier: dict[str, set[str]] = {}
        for pod in pods:
            by_tier.setdefault(pod.metadata.labels["flextrain.dev/tier"], set()).add(pod.spec.node_name.split("-")[0])
        return by_tier

    pools = wait_for(placed, timeout=60, what="five trainer pods bound by the scheduler")
    assert pools == {"gpu": {"gpu"}, "cpu": {"cpu"}, "edge": {"edge"}}
    # Indexed pods from the real Job controller: one per completion index.
    indexes = sorted(
        (p.metadata.labels["flextrain.dev/tier"], p.metadata.annotations["batch.kubernetes.io/job-completion-index"])
        for p in jobs.trainer_pods("factory")
    )
    assert indexes == [("cpu", "0"), ("cpu", "1"), ("edge", "0"), ("edge", "1"), ("gpu", "0")]
    gpu_pod = next(p for p in jobs.trainer_pods("factory") if p.metadata.labels["flextrain.dev/tier"] == "gpu")
    assert gpu_pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"

    status = wait_for(
        lambda: (s := jobs.get("factory").get("status", {})).get("tiersReady") == "3/3" and s,
        timeout=60,
        what="every tier ready in the job's status",
    )
    depths = {t["name"]: (t["depth"], t["depthSource"]) for t in status["tiers"]}
    assert depths["gpu"] == (9, "fixed") and depths["edge"][1] == "auto"
    # Several reconcile passes later nothing was made twice or replaced.
    time.sleep(3)
    assert jobs.children("factory") == first


def test_deleting_the_job_garbage_collects_every_child(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("doomed", namespace))
    wait_for(lambda: jobs.all_children_created("doomed", 3), timeout=30, what="children")
    wait_for(lambda: len(jobs.trainer_pods("doomed")) == 5, timeout=60, what="trainer pods")
    jobs.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")

    def gone() -> bool:
        left = {k: v for k, v in jobs.children("doomed").items() if v}
        return not left and not jobs.trainer_pods("doomed")

    wait_for(gone, timeout=90, what="the garbage collector removing children and pods")
    assert not [j for j in jobs.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]]


def test_suspend_removes_trainer_pods_and_resume_brings_them_back(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("pausing", namespace))
    wait_for(lambda: len(jobs.trainer_pods("pausing")) == 5, timeout=60, what="trainer pods")
    created = jobs.children("pausing")

    jobs.patch("pausing", {"spec": {"suspend": True}})
    wait_for(lambda: not jobs.trainer_pods("pausing"), timeout=60, what="the Job controller deleting suspended pods")
    wait_for(lambda: jobs.get("pausing").get("status", {}).get("phase") == "Suspended", timeout=30, what="phase Suspended")
    assert all(j.spec.suspend for j in jobs.batch.list_namespaced_job(namespace).items)

    jobs.patch("pausing", {"spec": {"suspend": False}})
    wait_for(lambda: len([p for p in jobs.trainer_pods("pausing") if p.status.phase == "Running"]) == 5, timeout=60, what="pods back")
    resumed = jobs.condition("pausing", "Suspended")
    assert resumed is not None and resumed["status"] == "False", resumed
    assert jobs.children("pausing") == created


def test_a_tier_no_node_can_take_shows_the_schedulers_reason(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    tier_name = f"edge-no-toleration-{namespace[-5:]}"
    untolerated = {
        "architecture": "arm64",
        "nodeSelector": {"flextrain.dev/pool": "edge"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    }
    with device_tier(api, tier_name, **untolerated):
        jobs = Jobs(api, namespace)
        jobs.create(
            factory_job(
                "stuck",
                namespace,
                tiers=[
                    {"name": "cpu", "deviceTierRef": "cpu-x86", "replicas": 1, "depth": 5},
                    {"name": "edge", "deviceTierRef": tier_name, "replicas": 1, "depth": 3},
                ],
            )
        )

        def degraded() -> Body | None:
            cond = jobs.condition("stuck", "Degraded")
            return cond if cond and cond["reason"] == "PodsUnschedulable" else None

        cond = wait_for(degraded, timeout=60, what="Degraded=True PodsUnschedulable")
        assert cond["status"] == "True"
        assert "edge" in cond["message"] and "untolerated taint" in cond["message"], cond["message"]
        # The operator's own node matching says the same before any pod exists.
        tiers = jobs.condition("stuck", "TiersAvailable")
        assert tiers is not None and tiers["reason"] == "NoMatchingNodes", tiers


def test_a_checkpoint_claim_no_volume_binds_is_reported_on_the_job(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    """No provisioner serves the namespace (as on a cluster without a default
    StorageClass): the job says why its aggregator cannot start, instead of waiting in
    silence. The test operator reports after 3 s (FLEXTRAIN_OPERATOR_CLAIM_PENDING_AFTER;
    60 by default)."""
    agent.unprovisioned.add(namespace)
    try:
        jobs = Jobs(api, namespace)
        jobs.create(factory_job("unbound", namespace))

        def pending() -> Body | None:
            cond = jobs.condition("unbound", "AggregatorReady")
            return cond if cond and cond["reason"] == "CheckpointClaimPending" else None

        cond = wait_for(pending, timeout=60, what="AggregatorReady=False CheckpointClaimPending")
        assert cond["status"] == "False"
        assert "unbound-checkpoints" in cond["message"] and "no StorageClass" in cond["message"], cond["message"]
        warning = wait_for(lambda: _warning(jobs, "unbound", "CheckpointClaimPending"), timeout=30, what="its Warning")
        assert "checkpoints.storageClass" in (warning.message or "")
        claim = client.CoreV1Api(api).read_namespaced_persistent_volume_claim("unbound-checkpoints", namespace)
        assert claim.status.phase == "Pending"
    finally:
        agent.unprovisioned.discard(namespace)


def _warning(jobs: Jobs, job: str, reason_part: str) -> client.CoreV1Event | None:
    return next((e for e in jobs.events(job) if e.type == "Warning" and reason_part in (e.reason or "") + (e.message or "")), None)


def test_a_child_the_server_forbids_is_reported_and_retried(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    """403: a ResourceQuota that allows no Deployment in the namespace."""
    jobs = Jobs(api, namespace)
    jobs.core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "no-deployments"}, "spec": {"hard": {"count/deployments.apps": "0"}}}
    )
    jobs.create(factory_job("quota", namespace))

    def reported() -> Body | None:
        for cond in jobs.get("quota").get("status", {}).get("conditions", []):
            if "exceeded quota" in cond.get("message", "") and cond["status"] in ("True", "False"):
                return dict(cond)
        return None

    cond = wait_for(reported, timeout=30, what="a condition quoting the server's 403")
    assert "Deployment" in cond["message"], cond
    assert wait_for(lambda: _warning(jobs, "quota", "quota"), timeout=30, what="a Warning Event")
    # Retries: once the quota is gone the aggregator Deployment is created.
    jobs.core.delete_namespaced_resource_quota("no-deployments", namespace)
    wait_for(lambda: jobs.all_children_created("quota", 3), timeout=60, what="children after the quota is removed")


def test_a_child_the_server_finds_invalid_is_reported(
    api: client.ApiClient,
    operator: install.OperatorProcess,
    agent: NodeAgent,
    namespace: str,
    kubectl: Callable[..., Any],
) -> None:
    """422: a ValidatingAdmissionPolicy of the cluster admin refuses trainer Jobs."""
    policy = f"no-trainers-{namespace[-5:]}"
    kubectl(
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [batch], apiVersions: [v1], operations: [CREATE], resources: [jobs]}}
  validations:
  - expression: "false"
    message: "site policy: no batch Jobs in this namespace"
    reason: Invalid
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
""",
    )
    try:
        jobs = Jobs(api, namespace)
        # The binding takes effect asynchronously: wait until it refuses a Job.
        probe = {"metadata": {"name": "probe"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}

        def refusing() -> bool:
            try:
                jobs.batch.create_namespaced_job(namespace, probe, dry_run="All")
            except client.ApiException as exc:
                return exc.status == 422
            return False

        wait_for(refusing, timeout=30, what="the admission policy in force")
        jobs.create(factory_job("refused", namespace))

        def reported() -> Body | None:
            for cond in jobs.get("refused").get("status", {}).get("conditions", []):
                if "site policy" in cond.get("message", ""):
                    return dict(cond)
            return None

        cond = wait_for(reported, timeout=30, what="a condition quoting the server's 422")
        assert "Job" in cond["message"], cond
        assert wait_for(lambda: _warning(jobs, "refused", "site policy"), timeout=30, what="a Warning Event")
        created = jobs.children("refused")
        assert not created["Job"]
    finally:
        kubectl("delete", "validatingadmissionpolicybinding", policy, check=False)
        kubectl("delete", "validatingadmissionpolicy", policy, check=False)
    wait_for(lambda: jobs.all_children_created("refused", 3), timeout=60, what="tier Jobs after the policy is removed")


def test_a_conflicting_object_is_reported_and_never_referenced(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    """409: a Secret named like the job's token Secret that the job does not own."""
    jobs = Jobs(api, namespace)
    jobs.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "clash-token"}, "stringData": {"token": "someone else's"}}
    )
    jobs.create(factory_job("clash", namespace))

    def conflict() -> Body | None:
        cond = jobs.condition("clash", "Progressing")
        return cond if cond and cond["reason"] == "ChildConflict" else None

    cond = wait_for(conflict, timeout=30, what="Progressing=False ChildConflict")
    assert "clash-token" in cond["message"], cond
    assert wait_for(lambda: _warning(jobs, "clash", "ChildConflict"), timeout=30, what="a Warning Event")
    time.sleep(2)
    made = jobs.children("clash")
    assert not made["Deployment"] and not made["Job"], f"workloads reading a foreign Secret were created: {made}"


def test_a_killed_operator_restarts_without_duplicates(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("survivor", namespace))
    # Kill it while it is creating this job's children (mid-reconcile).
    wait_for(lambda: any(jobs.children("survivor").values()), timeout=30, interval=0.02, what="the first child")
    operator.kill()
    before = jobs.children("survivor")
    operator.start()
    operator.wait_live()
    after = wait_for(lambda: jobs.all_children_created("survivor", 3), timeout=60, what="all children after restart")
    for kind, uids in before.items():
        assert set(uids) <= set(after[kind]), f"{kind} recreated: {uids} -> {after[kind]}"
    time.sleep(3)
    assert jobs.children("survivor") == after
