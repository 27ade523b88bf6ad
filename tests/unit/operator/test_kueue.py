"""Jobs with spec.queueName: reconcile() as tables of what Kueue's Workload says.

The job's pods (aggregator and tier Jobs) exist only while Kueue admits its Workload,
all at once, placed by the admitted ResourceFlavors; an eviction stops them and gives the
quota back; a finished job marks its Workload Finished."""

from __future__ import annotations

import dataclasses
from typing import Any

from flextrain.api.flextrainjob import FlexTrainJobStatus
from flextrain.operator import builders
from flextrain.operator.config import OperatorSettings
from flextrain.operator.observed import (
    ChildState,
    ClaimState,
    FlavorState,
    Observed,
    WorkloadState,
    workload_state,
)
from flextrain.operator.plan import AggregatorReading, Plan
from flextrain.operator.reconcile import reconcile
from tests.unit.operator.conftest import NOW, UID, a_node, job, tier
from tests.unit.operator.test_reconcile import cond, started

KUEUE = OperatorSettings(finish_grace=30, kueue=True)
TIERS = {"cpu": tier("cpu")}
NODES = [a_node("n1")]
FLAVORS = {
    "cpu-pool": FlavorState(
        "cpu-pool",
        {"flextrain.dev/pool": "cpu", "zone": "a"},
        ({"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},),
    )
}


def queued(**spec: Any) -> Any:
    return job(queueName="team-a", **spec)


def workload(**kw: Any) -> WorkloadState:
    return WorkloadState(name="job", controller_uid=UID, resource_version="7", **kw)


ADMITTED = workload(
    admitted=True,
    cluster_queue="factory",
    flavors={"strong": ("cpu-pool",), "weak": ("cpu-pool",), "aggregator": ("cpu-pool",)},
    conditions=({"type": "QuotaReserved", "status": "True"}, {"type": "Admitted", "status": "True"}),
)


def only_simple() -> Observed:
    """The children that run no pod (what a queued job has before Kueue admits it)."""
    return Observed(
        secret=ChildState("job-token", UID),
        service=ChildState("job-aggregator", UID),
        network_policy=ChildState("job-aggregator", UID),
        disruption_budget=ChildState("job-aggregator", UID),
        checkpoint_claim=ClaimState("job-checkpoints", UID, phase="Bound"),
    )


def run(
    j: Any = None,
    *,
    observed: Observed | None = None,
    status: FlexTrainJobStatus | None = None,
    settings: OperatorSettings = KUEUE,
    flavors: dict[str, FlavorState] | None = None,
    reading: AggregatorReading | None = None,
) -> Plan:
    return reconcile(
        j or queued(),
        status,
        TIERS,
        NODES,
        observed or Observed(),
        reading or AggregatorReading(),
        NOW,
        settings,
        "tok",
        flavors=FLAVORS if flavors is None else flavors,
    )


def kinds(plan: Plan) -> list[str]:
    return [o["kind"] for o in plan.create]


def test_a_new_queued_job_gets_its_workload_and_no_pods() -> None:
    plan = run(observed=Observed(secret=ChildState("job-token", UID)))
    assert kinds(plan) == ["Workload", "Service", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget"]
    wl = plan.create[0]
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["metadata"]["name"] == "job"
    assert wl["spec"]["queueName"] == "team-a" and wl["spec"]["active"] is True
    assert [(p["name"], p["count"]) for p in wl["spec"]["podSets"]] == [("strong", 1), ("weak", 2), ("aggregator", 1)]
    assert wl["metadata"]["ownerReferences"][0]["uid"] == UID
    assert wl["metadata"]["labels"]["flextrain.dev/job"] == "job"
    assert plan.status.phase == "Pending" and plan.status.start_time is None
    assert cond(plan, "Admitted") == ("False", "Queued")


def test_pod_sets_carry_what_kueue_reads_of_the_pods() -> None:
    plan = run(observed=Observed(secret=ChildState("job-token", UID)))
    pod_sets = {p["name"]: p["template"]["spec"] for p in plan.create[0]["spec"]["podSets"]}
    trainer = pod_sets["weak"]
    assert trainer["nodeSelector"]["flextrain.dev/pool"] == "cpu"
    assert trainer["containers"][0]["resources"]["requests"]["cpu"]
    assert "env" not in trainer["containers"][0] and "volumes" not in trainer
    assert pod_sets["aggregator"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}


def test_a_waiting_job_says_why_in_kueues_words_and_creates_nothing_that_runs() -> None:
    waiting = workload(waiting="couldn't assign flavors to pod set strong: insufficient quota for cpu")
    plan = run(observed=dataclasses.replace(only_simple(), workload=waiting))
    assert plan.create == [] and plan.patch == []
    status, reason = cond(plan, "Admitted") or ("", "")
    assert (status, reason) == ("False", "Queued")
    message = next(c.message for c in plan.status.conditions or [] if c.type == "Admitted")
    assert "LocalQueue team-a" in message and "insufficient quota for cpu" in message
    assert cond(plan, "AggregatorReady") == ("False", "AggregatorStopped")


def test_admission_creates_every_tier_and_the_aggregator_at_once_placed_by_the_flavors() -> None:
    plan = run(observed=dataclasses.replace(only_simple(), workload=ADMITTED))
    assert sorted(kinds(plan)) == ["Deployment", "Job", "Job"]
    for obj in plan.create:
        pod = obj["spec"]["template"]["spec"]
        assert pod["nodeSelector"]["zone"] == "a"  # the flavor's label, beside the tier's own
        assert {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod["tolerations"]
        if obj["kind"] == "Job":
            assert obj["spec"]["suspend"] is False
    assert cond(plan, "Admitted") == ("True", "Admitted")
    assert plan.status.start_time is not None


def test_an_unreadable_flavor_holds_the_pods() -> None:
    plan = run(observed=dataclasses.replace(only_simple(), workload=ADMITTED), flavors={})
    assert plan.create == []
    message = next(c.message for c in plan.status.conditions or [] if c.type == "Admitted")
    assert "ResourceFlavor(s) cpu-pool cannot be read" in message


def test_an_evicted_job_stops_its_pods_then_gives_the_quota_back() -> None:
    evicted = dataclasses.replace(ADMITTED, evicted="Preempted: to admit a job of higher priority")
    running = dataclasses.replace(started(strong={"ready": 1}, weak={"ready": 2}), workload=evicted)
    plan = run(observed=running)
    patched = {(p.kind, p.name): p.body for p in plan.patch}
    assert patched == {
        ("Job", "job-strong"): {"spec": {"suspend": True}},
        ("Job", "job-weak"): {"spec": {"suspend": True}},
        ("Deployment", "job-aggregator"): {"spec": {"replicas": 0}},
    }
    assert cond(plan, "Admitted") == ("False", "Evicted") and plan.status.phase == "Pending"
    # Once the pods are gone: the Workload's reservation is cleared (the stored conditions
    # kept, QuotaReserved and Admitted False), guarded by its resourceVersion.
    stopped = dataclasses.replace(
        started(replicas=0, available=0, strong={"suspended": True}, weak={"suspended": True}), workload=evicted
    )
    [patch] = run(observed=stopped).patch
    assert (patch.kind, patch.subresource) == ("Workload", "status")
    assert patch.body["metadata"] == {"resourceVersion": "7"}
    assert patch.body["status"]["admission"] is None
    conditions = {c["type"]: c["status"] for c in patch.body["status"]["conditions"]}
    assert conditions == {"QuotaReserved": "False", "Admitted": "False"}


def test_suspend_deactivates_the_workload_and_resume_reactivates_it() -> None:
    plan = run(queued(suspend=True), observed=dataclasses.replace(only_simple(), workload=workload()))
    assert [(p.kind, p.body) for p in plan.patch] == [("Workload", {"spec": {"active": False}})]
    assert plan.status.phase == "Suspended"
    plan = run(observed=dataclasses.replace(only_simple(), workload=workload(active=False)))
    assert [(p.kind, p.body) for p in plan.patch] == [("Workload", {"spec": {"active": True}})]


def test_a_finished_job_marks_its_workload_finished_once() -> None:
    done = dataclasses.replace(
        started(strong={"complete": True, "succeeded": 1}, weak={"complete": True, "succeeded": 2}),
        workload=ADMITTED,
    )
    plan = run(observed=done)
    assert plan.status.phase == "Succeeded"
    [finish] = [p for p in plan.patch if p.kind == "Workload"]
    conditions = {c["type"]: (c["status"], c.get("reason")) for c in finish.body["status"]["conditions"]}
    # Kueue's own conditions are kept; Finished is added.
    assert conditions == {"QuotaReserved": ("True", None), "Admitted": ("True", None), "Finished": ("True", "Succeeded")}
    assert finish.body["metadata"] == {"resourceVersion": "7"}
    # The next passes (terminal phase) send it only until the Workload shows it.
    again = run(observed=done, status=plan.status)
    assert [p.kind for p in again.patch if p.kind == "Workload"] == ["Workload"]
    finished = dataclasses.replace(done, workload=dataclasses.replace(ADMITTED, finished=True))
    assert [p for p in run(observed=finished, status=plan.status).patch if p.kind == "Workload"] == []


def test_with_the_integration_off_a_queued_job_waits_and_says_so() -> None:
    plan = run(observed=only_simple(), settings=OperatorSettings(kueue=False))
    assert plan.create == []
    assert cond(plan, "Admitted") == ("False", "KueueDisabled")
    assert plan.status.phase == "Pending"


def test_a_workload_of_someone_else_is_a_conflict() -> None:
    theirs = dataclasses.replace(ADMITTED, controller_uid="someone-else")
    plan = run(observed=dataclasses.replace(only_simple(), workload=theirs))
    assert plan.create == [] and plan.patch == []
    assert cond(plan, "Admitted") == ("False", "ChildConflict")


def test_jobs_without_a_queue_never_get_a_workload() -> None:
    plan = run(job(), observed=Observed(secret=ChildState("job-token", UID)))
    assert "Workload" not in kinds(plan) and "Deployment" in kinds(plan)
    assert cond(plan, "Admitted") is None


def test_the_workload_state_reads_kueues_status() -> None:
    body = {
        "metadata": {"name": "job", "resourceVersion": "9", "ownerReferences": [{"controller": True, "uid": UID}]},
        "spec": {"active": True},
        "status": {
            "admission": {
                "clusterQueue": "factory",
                "podSetAssignments": [{"name": "strong", "flavors": {"cpu": "a", "memory": "a", "nvidia.com/gpu": "g"}}],
            },
            "conditions": [
                {"type": "QuotaReserved", "status": "True"},
                {"type": "Admitted", "status": "True"},
                {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "by a bigger job"},
            ],
        },
    }
    state = workload_state(body)
    assert state.admitted and state.evicted == "Preempted: by a bigger job"
    assert state.flavors == {"strong": ("a", "g")} and state.cluster_queue == "factory"
    assert workload_state({"metadata": {"name": "x"}}).admitted is False


def test_placement_never_overrides_the_pods_own_selector() -> None:
    pod: dict[str, Any] = {"nodeSelector": {"flextrain.dev/pool": "cpu"}, "tolerations": [{"key": "a", "operator": "Exists"}]}
    builders._place(pod, builders.Placement({"flextrain.dev/pool": "gpu", "zone": "b"}, ({"key": "a", "operator": "Exists"},)))
    assert pod["nodeSelector"] == {"flextrain.dev/pool": "cpu", "zone": "b"}
    assert pod["tolerations"] == [{"key": "a", "operator": "Exists"}]


def test_a_waiting_job_keeps_its_running_tier_jobs_suspended() -> None:
    # Kueue took the job back and cleared the admission: what exists stays stopped.
    observed = dataclasses.replace(
        started(replicas=0, available=0, strong={"suspended": True}, weak={"suspended": True}),
        workload=workload(evicted="Preempted: x"),
    )
    plan = run(observed=observed)
    assert plan.patch == [] and plan.create == []
    assert cond(plan, "Admitted") == ("False", "Evicted")


def test_a_flavor_unreadable_while_the_job_runs_stops_nothing() -> None:
    running = dataclasses.replace(started(strong={"ready": 1}, weak={"ready": 2}), workload=ADMITTED)
    plan = run(observed=running, flavors={})
    assert plan.patch == [] and plan.create == []
    assert cond(plan, "Admitted") == ("True", "Admitted")


def test_events_say_queued_admitted_and_warn_when_kueue_is_off() -> None:
    queued_plan = run(observed=dataclasses.replace(only_simple(), workload=workload()))
    assert [(e.type, e.reason) for e in queued_plan.events if e.reason in ("Queued", "Admitted")] == [("Normal", "Queued")]
    admitted = run(observed=dataclasses.replace(only_simple(), workload=ADMITTED), status=queued_plan.status)
    assert ("Normal", "Admitted") in [(e.type, e.reason) for e in admitted.events]
    off = run(observed=only_simple(), settings=OperatorSettings(kueue=False))
    assert ("Warning", "KueueDisabled") in [(e.type, e.reason) for e in off.events]
