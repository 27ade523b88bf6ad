"""The rest of docs/operator.md on the real control plane: trainer failures through the
real Job controller's podFailurePolicy (Degraded, then QuorumLost stopping everything),
a missing DeviceTier, a node pool that goes away and comes back, the deadline and the
TTL, user edits that stay, immutable tiers, a quiet steady state, and Events for the
longest job names."""

from __future__ import annotations

import time

from kubernetes import client

from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.node_agent import NodeAgent
from tests.cluster.test_operator import GROUP, PLURAL, VERSION, Jobs, device_tier, factory_job

PERMANENT_FAILURE = 2  # the trainer's exit code for errors retrying cannot fix


def _phase(jobs: Jobs, name: str) -> str | None:
    return jobs.get(name).get("status", {}).get("phase")


def _running_pods(jobs: Jobs, job: str, tier: str) -> list[client.V1Pod]:
    return [
        p
        for p in jobs.trainer_pods(job)
        if p.metadata.labels["flextrain.dev/tier"] == tier and p.status.phase == "Running"
    ]


def test_failed_trainers_degrade_the_job_then_losing_the_quorum_fails_it(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("fragile", namespace, aggregation={"quorum": 0.6}))
    wait_for(lambda: len(jobs.trainer_pods("fragile")) == 5, timeout=60, what="trainer pods")
    wait_for(lambda: _phase(jobs, "fragile") == "Running", timeout=60, what="phase Running")

    # Exit code 2 fails that index at once (podFailurePolicy FailIndex, no retry).
    [gpu_pod] = wait_for(lambda: _running_pods(jobs, "fragile", "gpu"), timeout=30, what="gpu pod")
    agent.finish(namespace, gpu_pod.metadata.name, PERMANENT_FAILURE)

    def degraded() -> dict[str, str] | None:
        cond = jobs.condition("fragile", "Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(degraded, timeout=60, what="Degraded=True after a failed index")
    assert "gpu" in cond["message"], cond
    assert _phase(jobs, "fragile") == "Degraded"
    gpu_job = jobs.batch.read_namespaced_job("fragile-gpu", namespace)
    assert gpu_job.status.failed_indexes == "0", gpu_job.status
    assert not [p for p in jobs.trainer_pods("fragile") if p.metadata.labels["flextrain.dev/tier"] == "gpu" and p.status.phase != "Failed"], "the failed index was retried"

    # 3 of 5 devices lost: the quorum (ceil(0.6 * 5) = 3 devices) cannot be met.
    for pod in wait_for(lambda: len(p := _running_pods(jobs, "fragile", "edge")) == 2 and p, timeout=30, what="edge pods"):
        agent.finish(namespace, pod.metadata.name, PERMANENT_FAILURE)
    wait_for(lambda: _phase(jobs, "fragile") == "Failed", timeout=60, what="phase Failed")
    failed = jobs.condition("fragile", "Failed")
    assert failed is not None and failed["reason"] == "QuorumLost", failed
    # Everything stops: tier Jobs suspended (the Job controller deletes their pods) and
    # the aggregator scaled to 0.
    wait_for(lambda: not _running_pods(jobs, "fragile", "cpu"), timeout=60, what="cpu trainers stopped")
    for tier_job in jobs.batch.list_namespaced_job(namespace).items:
        finished = any(c.type in ("Failed", "Complete") and c.status == "True" for c in tier_job.status.conditions or [])
        assert tier_job.spec.suspend or finished, f"{tier_job.metadata.name} neither suspended nor finished"
    assert jobs.apps.read_namespaced_deployment("fragile-aggregator", namespace).spec.replicas == 0


def test_a_missing_device_tier_blocks_the_job_until_it_is_created(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    tier_name = f"late-{namespace[-5:]}"
    jobs.create(
        factory_job("waiting", namespace, tiers=[{"name": "cpu", "deviceTierRef": tier_name, "replicas": 1, "depth": 3}])
    )

    def not_found() -> dict[str, str] | None:
        cond = jobs.condition("waiting", "TiersAvailable")
        return cond if cond and cond["reason"] == "DeviceTierNotFound" else None

    assert tier_name in wait_for(not_found, timeout=30, what="DeviceTierNotFound")["message"]
    assert not any(jobs.children("waiting").values()), "children created without their DeviceTier"
    cpu_pool = {"nodeSelector": {"flextrain.dev/pool": "cpu"}, "resources": {"requests": {"cpu": "1"}}}
    with device_tier(api, tier_name, **cpu_pool):
        wait_for(lambda: jobs.all_children_created("waiting", 1), timeout=30, what="children once the tier exists")
        wait_for(lambda: _running_pods(jobs, "waiting", "cpu"), timeout=60, what="the trainer running")


def test_a_pool_whose_nodes_stop_reporting_is_explained_until_they_return(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    """The node lifecycle controller marks nodes whose leases stop NotReady (grace 20 s)."""
    custom = client.CustomObjectsApi(api)

    def edge_ready() -> int | None:
        return custom.get_cluster_custom_object(GROUP, VERSION, "devicetiers", "arm-edge").get("status", {}).get("readyNodes")

    wait_for(lambda: edge_ready() == 2, timeout=30, what="both edge nodes ready")
    for node in ("edge-0", "edge-1"):
        agent.pause_node(node)
    try:
        wait_for(lambda: edge_ready() == 0, timeout=90, interval=1, what="the edge pool NotReady")
        jobs = Jobs(api, namespace)
        jobs.create(
            factory_job("edgeless", namespace, tiers=[{"name": "edge", "deviceTierRef": "arm-edge", "replicas": 1, "depth": 3}])
        )

        def no_nodes() -> dict[str, str] | None:
            cond = jobs.condition("edgeless", "TiersAvailable")
            return cond if cond and cond["reason"] == "NoMatchingNodes" else None

        wait_for(no_nodes, timeout=30, what="TiersAvailable=False NoMatchingNodes")
        # The children are created anyway: pending pods are what an autoscaler acts on.
        wait_for(lambda: jobs.all_children_created("edgeless", 1), timeout=30, what="children")
    finally:
        for node in ("edge-0", "edge-1"):
            agent.resume_node(node)
    wait_for(lambda: edge_ready() == 2, timeout=90, interval=1, what="the edge pool Ready again")
    wait_for(
        lambda: (c := jobs.condition("edgeless", "TiersAvailable")) and c["status"] == "True",
        timeout=60,
        what="TiersAvailable=True once nodes return",
    )


def test_the_deadline_fails_a_job_and_the_ttl_deletes_it(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("brief", namespace, activeDeadlineSeconds=5, ttlSecondsAfterFinished=5))
    wait_for(lambda: _phase(jobs, "brief") == "Failed", timeout=60, what="phase Failed at the deadline")
    assert jobs.condition("brief", "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]

    def deleted() -> bool:
        items = jobs.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        return not items and not any(jobs.children("brief").values())

    wait_for(deleted, timeout=90, what="the TTL deleting the job and the garbage collector its children")


def test_user_edits_to_children_stay(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("edited", namespace))
    wait_for(lambda: jobs.all_children_created("edited", 3), timeout=30, what="children")
    jobs.batch.patch_namespaced_job("edited-cpu", namespace, {"metadata": {"annotations": {"team/owner": "line-3"}}})
    jobs.apps.patch_namespaced_deployment(
        "edited-aggregator", namespace, {"metadata": {"labels": {"cost-center": "4711"}}}
    )
    time.sleep(4)  # several passes at a 1 s status interval
    assert jobs.batch.read_namespaced_job("edited-cpu", namespace).metadata.annotations.get("team/owner") == "line-3"
    assert jobs.apps.read_namespaced_deployment("edited-aggregator", namespace).metadata.labels.get("cost-center") == "4711"


def test_tiers_cannot_be_changed_after_creation(
    api: client.ApiClient, installed_chart: object, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("fixed", namespace))
    try:
        jobs.patch("fixed", {"spec": {"tiers": [{"name": "cpu", "deviceTierRef": "cpu-x86", "replicas": 9, "depth": 5}]}})
    except client.ApiException as exc:
        assert exc.status == 422 and "tiers are immutable" in str(exc.body), exc.body
    else:
        raise AssertionError("the API server accepted a change of spec.tiers")


def test_a_job_waiting_for_an_unsatisfiable_depth_writes_nothing(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    tier_name = f"tiny-{namespace[-5:]}"
    with device_tier(api, tier_name, nodeSelector={"flextrain.dev/pool": "cpu"}, capacity={"parameters": 10}):
        jobs = Jobs(api, namespace)
        jobs.create(
            factory_job("unsatisfiable", namespace, tiers=[{"name": "t", "deviceTierRef": tier_name, "replicas": 1, "depth": "auto"}])
        )
        wait_for(
            lambda: (c := jobs.condition("unsatisfiable", "TiersAvailable")) and c["reason"] == "DepthUnsatisfiable",
            timeout=30,
            what="DepthUnsatisfiable",
        )
        time.sleep(1.5)
        version = jobs.get("unsatisfiable")["metadata"]["resourceVersion"]
        time.sleep(5)  # five status intervals
        assert jobs.get("unsatisfiable")["metadata"]["resourceVersion"] == version, "status rewritten while waiting"


def test_the_longest_job_name_gets_its_events(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    name = "l" * 253
    jobs.create(factory_job(name, namespace))
    events = wait_for(lambda: jobs.events(name), timeout=30, what="Events for a 253-character job name")
    assert all(len(e.metadata.name) <= 253 for e in events)
    wait_for(lambda: jobs.all_children_created(name, 3), timeout=30, what="children of the longest name")
