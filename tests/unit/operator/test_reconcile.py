"""reconcile() as tables: job, DeviceTiers, nodes, observed children, aggregator reading
and time in; children to create, patches, Events and the status out."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from flextrain.api.flextrainjob import FlexTrainJobStatus
from flextrain.operator import certs
from flextrain.operator.config import OperatorSettings
from flextrain.operator.observed import (
    AggregatorState,
    ChildState,
    ClaimState,
    Observed,
    PodState,
    TierJobState,
)
from flextrain.operator.plan import AggregatorReading, CreateFailure, Plan
from flextrain.operator.reconcile import reconcile
from flextrain.wire.status import AggregatorStatus
from flextrain.wire.status import TierStatus as WireTier
from tests.unit.operator.conftest import NOW, UID, a_node, job, tier

SETTINGS = OperatorSettings(finish_grace=30)
TIERS = {"cpu": tier("cpu")}
NODES = [a_node("n1")]


def _state(tier_name: str, replicas: int, **kw: Any) -> TierJobState:
    return TierJobState(
        name=f"job-{tier_name}",
        tier=tier_name,
        controller_uid=UID,
        suspended=kw.pop("suspended", False),
        completions=replicas,
        **kw,
    )


def started(
    *,
    available: int = 1,
    replicas: int = 1,
    strong: dict[str, Any] | None = None,
    weak: dict[str, Any] | None = None,
    pods: tuple[PodState, ...] = (),
    depths: dict[str, int] | None = None,
) -> Observed:
    """Every child exists (tiers: strong x1 depth 9, weak x2 depth 3)."""
    return Observed(
        secret=ChildState("job-token", UID),
        service=ChildState("job-aggregator", UID),
        network_policy=ChildState("job-aggregator", UID),
        disruption_budget=ChildState("job-aggregator", UID),
        checkpoint_claim=ClaimState("job-checkpoints", UID, phase="Bound"),
        aggregator=AggregatorState(
            "job-aggregator",
            UID,
            replicas=replicas,
            available=available,
            depths=depths or {"strong": 9, "weak": 3},
        ),
        tier_jobs={
            "strong": _state("strong", 1, **(strong or {})),
            "weak": _state("weak", 2, **(weak or {})),
        },
        pods=pods,
    )


def run(
    j: Any = None,
    *,
    status: FlexTrainJobStatus | None = None,
    observed: Observed | None = None,
    reading: AggregatorReading | None = None,
    tiers: dict[str, Any] | None = None,
    nodes: list[Any] | None = None,
    now: Any = NOW,
    settings: OperatorSettings = SETTINGS,
    invalid_tiers: dict[str, str] | None = None,
    refused: list[CreateFailure] | None = None,
) -> Plan:
    return reconcile(
        j or job(),
        status,
        TIERS if tiers is None else tiers,
        NODES if nodes is None else nodes,
        observed or Observed(),
        reading or AggregatorReading(),
        now,
        settings,
        "tok",
        invalid_tiers=invalid_tiers,
        refused=refused or (),
    )


def cond(plan: Plan, type_: str) -> tuple[str, str] | None:
    for c in plan.status.conditions or []:
        if c.type == type_:
            return (c.status, c.reason)
    return None


def running_status() -> FlexTrainJobStatus:
    return run(observed=started(strong={"ready": 1}, weak={"ready": 2})).status


def reading(
    round_: int = 1, *, done: bool = False, accuracy: dict[int, tuple[float, int]] | None = None
) -> AggregatorReading:
    return AggregatorReading(
        status=AggregatorStatus(
            job="job",
            round=round_,
            total_rounds=2,
            done=done,
            tiers=[
                WireTier("strong", 9, 1, 1, 0, round_, 10, 10),
                WireTier("weak", 3, 2, 2, 0, round_, 5, 5),
            ],
            accuracy=accuracy or {},
        )
    )


# -- creation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "created"),
    [
        # The aggregator and trainers read the Secret: they come once it is the job's.
        (Observed(), ["Secret", "Service", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget"]),
        (
            Observed(secret=ChildState("job-token", UID)),
            ["Service", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget", "Deployment", "Job", "Job"],
        ),
        (dataclasses.replace(started(), tier_jobs={}), ["Job", "Job"]),
        (dataclasses.replace(started(), secret=None, service=None), ["Secret", "Service"]),
        (dataclasses.replace(started(), network_policy=None), ["NetworkPolicy"]),
        (dataclasses.replace(started(), disruption_budget=None), ["PodDisruptionBudget"]),
        (dataclasses.replace(started(), checkpoint_claim=None), ["PersistentVolumeClaim"]),
        (dataclasses.replace(started(), aggregator=None), ["Deployment"]),
        (started(), []),
    ],
    ids=[
        "nothing",
        "only the secret",
        "no tier jobs",
        "no secret or service",
        "no network policy",
        "no disruption budget",
        "no checkpoint claim",
        "no aggregator",
        "everything",
    ],
)
def test_creates_what_is_missing_and_nothing_twice(observed: Observed, created: list[str]) -> None:
    plan = run(observed=observed)
    assert [o["kind"] for o in plan.create] == created
    assert plan.patch == []


def test_the_first_pass_records_depths_start_time_and_an_event_for_auto() -> None:
    j = job(
        tiers=[
            {"name": "strong", "deviceTierRef": "cpu", "replicas": 1, "depth": 9},
            {"name": "weak", "deviceTierRef": "cpu", "replicas": 2, "depth": "auto"},
        ]
    )
    plan = run(j, tiers={"cpu": tier("cpu", capacity={"parameters": 25000})})
    rows = {t.name: (t.depth, t.depth_source, t.replicas) for t in plan.status.tiers or []}
    assert rows == {"strong": (9, "fixed", 1), "weak": (3, "auto", 2)}
    assert plan.status.start_time == NOW and plan.status.phase == "Pending"
    assert [e.reason for e in plan.events] == ["DepthChosen"]  # "Created" comes from the runtime
    assert "weak=3 (auto from DeviceTier cpu capacity)" in plan.events[0].message


def test_recorded_depths_are_kept_even_when_the_capacity_changes() -> None:
    j = job(tiers=[{"name": "weak", "deviceTierRef": "cpu", "replicas": 2, "depth": "auto"}])
    first = run(j, tiers={"cpu": tier("cpu", capacity={"parameters": 25000})})
    obs = Observed(aggregator=AggregatorState("job-aggregator", UID, 1, 0, depths={"weak": 3}))
    later = run(
        j,
        status=first.status,
        observed=obs,
        tiers={"cpu": tier("cpu", capacity={"parameters": 10_000_000})},
    )
    assert [t.depth for t in later.status.tiers or []] == [3]
    assert not [e for e in later.events if e.reason == "DepthChosen"]


@pytest.mark.parametrize(
    ("tiers", "nodes", "reason", "creates"),
    [
        ({}, NODES, "DeviceTierNotFound", False),
        ({"cpu": tier("cpu")}, [], "NoMatchingNodes", True),
        ({"cpu": tier("cpu")}, [a_node("n1", ready=False)], "NoMatchingNodes", True),
        ({"cpu": tier("cpu", capacity={"parameters": 10})}, NODES, "DepthUnsatisfiable", False),
        ({"cpu": tier("cpu")}, NODES, "TiersAvailable", True),
    ],
    ids=["tier missing", "no nodes", "node not ready", "capacity too small", "available"],
)
def test_tier_availability(
    tiers: dict[str, Any], nodes: list[Any], reason: str, creates: bool
) -> None:
    j = job(tiers=[{"name": "weak", "deviceTierRef": "cpu", "replicas": 2, "depth": "auto"}])
    plan = run(j, tiers=tiers, nodes=nodes)
    status, why = cond(plan, "TiersAvailable") or ("", "")
    assert why == reason and status == ("True" if reason == "TiersAvailable" else "False")
    assert bool(plan.create) is creates
    assert plan.status.phase == "Pending"
    warnings = [e for e in plan.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ([] if reason == "TiersAvailable" else [reason])


def test_a_condition_event_is_posted_once() -> None:
    first = run(tiers={})
    again = run(status=first.status, tiers={})
    assert [e.reason for e in first.events] == ["DeviceTierNotFound"]
    assert again.events == [] and again.status == first.status


# -- phases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "read", "phase", "reasons"),
    [
        (
            started(available=0),
            None,
            "Pending",
            {"AggregatorReady": "AggregatorStarting", "Progressing": "TrainersStarting"},
        ),
        (started(weak={"ready": 2}), None, "Pending", {"AggregatorReady": "AggregatorReady"}),
        (
            started(strong={"ready": 1}, weak={"ready": 1}),
            None,
            "Running",
            {"Degraded": "AllTiersHealthy"},
        ),
        (started(), reading(1), "Running", {"Progressing": "RoundCompleted"}),
        (
            started(weak={"failed": 6, "failed_reason": "BackoffLimitExceeded"}),
            None,
            "Failed",
            {"Failed": "QuorumLost"},
        ),
        (
            started(weak={"failed_indexes": 1, "ready": 1}, strong={"ready": 1}),
            None,
            "Failed",
            {"Failed": "QuorumLost"},
        ),
        (
            started(
                strong={"complete": True, "succeeded": 1}, weak={"complete": True, "succeeded": 2}
            ),
            None,
            "Succeeded",
            {"Complete": "TrainingComplete"},
        ),
        (started(), reading(2, done=True), "Succeeded", {"Complete": "TrainingComplete"}),
        (
            started(pods=(PodState("p", "weak", "Pending", True, "0/3 nodes are available"),)),
            None,
            "Degraded",
            {"Degraded": "PodsUnschedulable"},
        ),
    ],
    ids=[
        "aggregator starting",
        "a tier without trainers",
        "running",
        "round done",
        "tier failed, quorum 1.0",
        "index failed, quorum 1.0",
        "jobs complete",
        "aggregator done",
        "unschedulable",
    ],
)
def test_phase_and_reasons(
    observed: Observed, read: AggregatorReading | None, phase: str, reasons: dict[str, str]
) -> None:
    plan = run(observed=observed, reading=read)
    assert plan.status.phase == phase
    for type_, reason in reasons.items():
        assert (cond(plan, type_) or ("", ""))[1] == reason, plan.status.conditions


def test_a_failed_tier_degrades_while_the_quorum_holds_and_names_the_tier() -> None:
    j = job(aggregation={"quorum": 0.6})
    plan = run(
        j,
        status=running_status(),
        observed=started(strong={"ready": 1}, weak={"ready": 1, "failed": 4, "failed_indexes": 1}),
    )
    assert plan.status.phase == "Degraded"
    [c] = [c for c in plan.status.conditions or [] if c.type == "Degraded"]
    assert c.reason == "TierJobFailed"
    assert "tier weak: 1 of 2 replicas failed permanently" in c.message
    assert "2 of 3 devices" in c.message and "quorum needs 2" in c.message
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "TierJobFailed")]
    assert plan.patch == []  # training continues


def test_quorum_lost_stops_every_tier_and_the_aggregator() -> None:
    plan = run(observed=started(strong={"ready": 1}, weak={"failed_reason": "PodFailurePolicy"}))
    assert plan.status.phase == "Failed" and plan.status.completion_time == NOW
    patches = {(p.kind, p.name): p.body for p in plan.patch}
    assert patches == {
        ("Deployment", "job-aggregator"): {"spec": {"replicas": 0}},
        ("Job", "job-strong"): {"spec": {"suspend": True}},
    }


def test_round_accuracy_and_last_round_pushed_come_from_the_aggregator() -> None:
    plan = run(
        observed=started(strong={"ready": 1}, weak={"ready": 2}),
        reading=reading(3, accuracy={3: (0.61, 3), 9: (0.83, 3), 5: (0.9, 2)}),
    )
    s = plan.status
    assert s.round == 3 and s.total_rounds == 2
    assert [(a.depth, a.accuracy, a.round) for a in s.accuracy or []] == [
        (3, 0.61, 3),
        (5, 0.9, 2),
        (9, 0.83, 3),
    ]
    assert s.best_accuracy == 0.83  # best of the latest evaluation (round 3)
    assert s.accuracy_by_depth == "d3=0.610 d5=0.900 d9=0.830"  # kubectl get's Accuracy column
    assert {t.name: t.last_round_pushed for t in s.tiers or []} == {"strong": 3, "weak": 3}
    assert s.tiers_ready == "2/2"


def test_an_unreachable_aggregator_keeps_the_last_known_round() -> None:
    first = run(observed=started(), reading=reading(2, accuracy={9: (0.8, 2)}))
    later = run(
        status=first.status,
        observed=started(available=0),
        reading=AggregatorReading(error="UNAVAILABLE: connection refused"),
    )
    assert later.status.round == 2 and later.status.best_accuracy == 0.8
    assert later.status.phase == "Degraded"
    assert cond(later, "AggregatorReady") == ("False", "AggregatorUnavailable")
    assert cond(later, "Degraded") == ("True", "AggregatorUnavailable")


# -- lifecycle ------------------------------------------------------------------------------


def test_success_waits_for_trainers_then_stops_the_aggregator() -> None:
    done = run(observed=started(), reading=reading(2, done=True))
    assert done.status.phase == "Succeeded" and done.patch == []
    assert done.requeue_after == SETTINGS.finish_grace
    # Trainers still running within the grace period: wait.
    soon = run(status=done.status, observed=started(), now=NOW + timedelta(seconds=5))
    assert soon.patch == [] and soon.requeue_after == pytest.approx(25)
    # All tier Jobs complete: stop the aggregator now.
    finished = started(strong={"complete": True}, weak={"complete": True})
    stop = run(status=done.status, observed=finished, now=NOW + timedelta(seconds=5))
    assert [(p.kind, p.body) for p in stop.patch] == [("Deployment", {"spec": {"replicas": 0}})]
    # Grace over: suspend what still runs, too.
    late = run(status=done.status, observed=started(), now=NOW + timedelta(seconds=31))
    assert {p.kind for p in late.patch} == {"Deployment", "Job"}


def test_model_location_is_the_final_checkpoint_on_the_claim() -> None:
    j = job(
        checkpoint={"persistentVolumeClaim": {"claimName": "ckpt", "subPath": "a/b"}},
        training={"rounds": 8},
    )
    plan = run(j, observed=started(), reading=reading(8, done=True))
    assert plan.status.model_location == "pvc://ckpt/a/b/round-000008.pt"
    assert plan.status.model is not None
    assert (plan.status.model.claim, plan.status.model.exports) == ("ckpt", "pvc://ckpt/a/b/models/")
    assert "the final model is at pvc://ckpt/a/b/round-000008.pt" in next(
        c.message for c in plan.status.conditions or [] if c.type == "Complete"
    )
    # By default the operator's claim holds it; with an emptyDir nothing is kept.
    default = run(job(training={"rounds": 8}), observed=started(), reading=reading(8, done=True))
    assert default.status.model is not None and default.status.model.claim == "job-checkpoints"
    assert default.status.model.checkpoint == "pvc://job-checkpoints/round-000008.pt"
    empty = run(job(training={"rounds": 8}, checkpoint={"emptyDir": True}), observed=started(), reading=reading(8, done=True))
    assert empty.status.model is None and empty.status.model_location is None


@pytest.mark.parametrize(
    ("checkpoint", "has_claim"),
    [
        ({"persistentVolumeClaim": {"claimName": "ckpt"}}, True),
        (None, True),  # the operator's claim
        ({"emptyDir": True}, False),
    ],
)
def test_suspend_suspends_every_tier_and_keeps_the_checkpoint(checkpoint: dict[str, Any] | None, has_claim: bool) -> None:
    spec: dict[str, Any] = {"suspend": True}
    if checkpoint:
        spec["checkpoint"] = checkpoint
    plan = run(job(**spec), status=running_status(), observed=started())
    patches = {(p.kind, p.name): p.body for p in plan.patch}
    assert patches[("Job", "job-strong")] == {"spec": {"suspend": True}}
    assert patches[("Job", "job-weak")] == {"spec": {"suspend": True}}
    assert (("Deployment", "job-aggregator") in patches) is has_claim
    assert plan.status.phase == "Suspended"
    assert cond(plan, "Suspended") == ("True", "Suspended")
    assert cond(plan, "Progressing") == ("False", "Suspended")


def test_resume_unsuspends_and_restarts_the_deadline_clock() -> None:
    j = job(suspend=True, activeDeadlineSeconds=100)
    suspended = run(
        j,
        status=running_status(),
        observed=started(strong={"suspended": True}, weak={"suspended": True}),
    )
    later = NOW + timedelta(hours=5)
    resumed = run(
        job(activeDeadlineSeconds=100),
        status=suspended.status,
        now=later,
        observed=started(strong={"suspended": True}, weak={"suspended": True}),
    )
    assert {p.body["spec"]["suspend"] for p in resumed.patch if p.kind == "Job"} == {False}
    assert resumed.status.start_time == later
    assert cond(resumed, "Suspended") == ("False", "Resumed")
    assert resumed.status.phase != "Failed" and resumed.requeue_after == pytest.approx(100)


def test_created_suspended_creates_suspended_jobs_without_a_start_time() -> None:
    plan = run(job(suspend=True), observed=Observed(secret=ChildState("job-token", UID)))
    jobs = [o for o in plan.create if o["kind"] == "Job"]
    assert jobs and all(o["spec"]["suspend"] is True for o in jobs)
    assert plan.status.start_time is None and plan.status.phase == "Suspended"


def test_deadline_exceeded_fails_the_job() -> None:
    j = job(activeDeadlineSeconds=60)
    first = run(j, observed=started())
    assert first.requeue_after == pytest.approx(60)
    late = run(j, status=first.status, observed=started(), now=NOW + timedelta(seconds=61))
    assert late.status.phase == "Failed"
    assert cond(late, "Failed") == ("True", "DeadlineExceeded")
    assert {p.kind for p in late.patch} == {"Deployment", "Job"}


@pytest.mark.parametrize(("after", "deleted"), [(5, False), (10, True)])
def test_ttl_deletes_a_finished_job(after: int, deleted: bool) -> None:
    j = job(ttlSecondsAfterFinished=10)
    done = run(j, observed=started(), reading=reading(2, done=True))
    later = run(
        j,
        status=done.status,
        observed=started(strong={"complete": True}, weak={"complete": True}),
        now=NOW + timedelta(seconds=after),
    )
    assert later.delete_job is deleted
    if deleted:
        assert [e.reason for e in later.events if e.reason == "TTLExpired"]
    else:
        assert later.requeue_after == pytest.approx(10 - after)


def test_children_of_someone_else_are_never_touched() -> None:
    foreign = dataclasses.replace(
        started(),
        tier_jobs={
            "strong": dataclasses.replace(
                _state("strong", 1, suspended=True), controller_uid="another"
            )
        },
    )
    plan = run(observed=foreign)
    assert [o["kind"] for o in plan.create] == ["Job"]  # only the missing weak tier
    assert plan.patch == []
    assert cond(plan, "Progressing") == ("False", "ChildConflict")


def test_a_deleted_job_plans_nothing() -> None:
    j = job()
    j.metadata.model_extra["deletionTimestamp"] = "2025-01-01T00:00:00Z"  # type: ignore[index]
    plan = run(j, observed=started())
    assert plan.create == [] and plan.patch == [] and plan.events == []


def test_conditions_stay_bounded_and_keep_their_transition_time() -> None:
    first = run(observed=started(strong={"ready": 1}, weak={"ready": 2}))
    later = run(
        status=first.status,
        observed=started(strong={"ready": 1}, weak={"ready": 2}),
        now=NOW + timedelta(minutes=5),
    )
    assert later.status == first.status  # nothing changed: no status write
    types = [c.type for c in later.status.conditions or []]
    assert len(types) == len(set(types)) <= 16


def test_an_unsatisfiable_depth_is_a_steady_state() -> None:
    """Later passes over an unchanged world change nothing, not even a transition time,
    so the operator writes no status (TiersAvailable is set twice within a pass: first
    True from the nodes, then False from the depth)."""
    j = job(tiers=[{"name": "weak", "deviceTierRef": "cpu", "replicas": 2, "depth": "auto"}])
    tiers = {"cpu": tier("cpu", capacity={"parameters": 10})}
    first = run(j, tiers=tiers)
    assert cond(first, "TiersAvailable") == ("False", "DepthUnsatisfiable")
    later = run(j, status=first.status, tiers=tiers, now=NOW + timedelta(minutes=5))
    assert later.status == first.status
    assert later.events == []


def test_an_invalid_device_tier_is_named_invalid_not_missing() -> None:
    problems = "spec.tolerations[0].value: value must be empty when operator is Exists (got 'v')"
    plan = run(tiers={}, invalid_tiers={"cpu": problems})
    condition = next(c for c in plan.status.conditions or [] if c.type == "TiersAvailable")
    assert (condition.status, condition.reason) == ("False", "DeviceTierInvalid")
    assert "DeviceTier 'cpu' (tier 'strong') exists but is invalid" in condition.message
    assert problems in condition.message and "not found" not in condition.message
    assert plan.create == [] and plan.status.phase == "Pending"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "DeviceTierInvalid")]


def test_a_secret_of_someone_else_means_no_aggregator_and_no_trainers() -> None:
    foreign = Observed(secret=ChildState("job-token", "another-uid"))
    plan = run(observed=foreign)
    assert [o["kind"] for o in plan.create] == ["Service", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget"]  # nothing that reads the Secret
    condition = next(c for c in plan.status.conditions or [] if c.type == "Progressing")
    assert (condition.status, condition.reason) == ("False", "ChildConflict")
    assert "Secret job-token" in condition.message
    assert "no aggregator or trainer is created or kept running" in condition.message
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ChildConflict")]


def test_workloads_stop_when_their_secret_is_someone_elses() -> None:
    """Children made while the job owned its Secret, which was then replaced: they would
    read another token on their next start, so they are stopped, never deleted."""
    observed = dataclasses.replace(
        started(strong={"ready": 1}, weak={"ready": 2}), secret=ChildState("job-token", "x")
    )
    plan = run(status=running_status(), observed=observed)
    assert plan.create == []
    assert {(p.kind, p.name): p.body for p in plan.patch} == {
        ("Deployment", "job-aggregator"): {"spec": {"replicas": 0}},
        ("Job", "job-strong"): {"spec": {"suspend": True}},
        ("Job", "job-weak"): {"spec": {"suspend": True}},
    }
    assert cond(plan, "Progressing") == ("False", "ChildConflict")


@pytest.mark.parametrize(
    ("code", "reason", "condition"),
    [
        (422, "Invalid", "ChildInvalid"),
        (403, "Forbidden", "ChildForbidden"),
        (409, "AlreadyExists", "ChildConflict"),
        (500, "InternalError", "ChildCreateFailed"),
        (0, "", "ChildCreateFailed"),
    ],
)
def test_a_refused_create_is_a_condition_and_one_warning(
    code: int, reason: str, condition: str
) -> None:
    refused = [CreateFailure("Job", "job-strong", code, reason, "the server's words")]
    observed = Observed(secret=ChildState("job-token", UID))
    first = run(observed=observed, refused=refused)
    [c] = [c for c in first.status.conditions or [] if c.type == "Progressing"]
    assert (c.status, c.reason) == ("False", condition)
    assert "cannot create Job job-strong" in c.message and "the server's words" in c.message
    if code:
        assert f"answered {code} {reason}".rstrip() in c.message
    assert [(e.type, e.reason) for e in first.events] == [("Warning", condition)]
    # The next pass, still refused: nothing new to say, nothing to write.
    again = run(
        observed=observed, refused=refused, status=first.status, now=NOW + timedelta(seconds=9)
    )
    assert again.events == [] and again.status == first.status


def test_a_refused_secret_says_the_workloads_wait_for_it() -> None:
    refused = [CreateFailure("Secret", "job-token", 403, "Forbidden", "no create on secrets")]
    plan = run(refused=refused)
    [c] = [c for c in plan.status.conditions or [] if c.type == "Progressing"]
    assert c.reason == "ChildForbidden"
    assert "the aggregator and the trainers are created once the Secret exists" in c.message
    assert [o["kind"] for o in plan.create] == ["Secret", "Service", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget"]


def test_a_checkpoint_claim_no_volume_binds_is_said_on_the_job_once_it_lasts() -> None:
    def pending(seconds: float, storage_class: str | None = None) -> Observed:
        claim = ClaimState("job-checkpoints", UID, phase="Pending", storage_class=storage_class,
                           created=NOW - timedelta(seconds=seconds))
        return dataclasses.replace(started(available=0), checkpoint_claim=claim)

    # A provisioner takes seconds: nothing to say yet.
    assert cond(run(observed=pending(5)), "AggregatorReady") == ("False", "AggregatorStarting")
    # A minute later: the condition says why the aggregator cannot start, and a Warning.
    plan = run(observed=pending(61))
    assert cond(plan, "AggregatorReady") == ("False", "CheckpointClaimPending")
    [warning] = [e for e in plan.events if e.reason == "CheckpointClaimPending"]
    assert warning.type == "Warning"
    assert "job-checkpoints" in warning.message and "no StorageClass" in warning.message
    assert "checkpoints.storageClass" in warning.message
    # Steady: the next pass changes nothing and posts nothing.
    again = run(observed=pending(61), status=plan.status, now=NOW + timedelta(seconds=14))
    assert again.status == plan.status and not again.events
    # With a class, the message names it.
    classed = run(observed=pending(61, "fast-ssd"))
    assert "StorageClass fast-ssd" in next(c.message for c in classed.status.conditions or [] if c.type == "AggregatorReady")
    # Bound: nothing said.
    bound = dataclasses.replace(pending(600), checkpoint_claim=ClaimState("job-checkpoints", UID, phase="Bound"))
    assert cond(run(observed=bound), "AggregatorReady") == ("False", "AggregatorStarting")


# -- TLS ----------------------------------------------------------------------------------


def _kinds(plan: Plan) -> list[str]:
    return [o["kind"] for o in plan.create]


def test_a_new_tls_job_gets_its_chain_in_its_secret_and_no_certificate_object() -> None:
    chain = certs.issue("ca", ["job-aggregator"], now=NOW)
    plan = reconcile(
        job(), None, TIERS, NODES, Observed(), AggregatorReading(), NOW, SETTINGS, "tok", certificates=chain
    )
    [secret] = [o for o in plan.create if o["kind"] == "Secret"]
    assert {"ca.crt", "tls.crt", "tls.key", "ca.key"} <= set(secret["data"])
    assert "Certificate" not in _kinds(plan)


def test_with_cert_manager_the_job_gets_a_certificate_once_and_its_secret_no_chain() -> None:
    settings = dataclasses.replace(SETTINGS, tls_issuer_name="ca-issuer")
    chain = certs.issue("ca", ["job-aggregator"], now=NOW)
    plan = reconcile(
        job(), None, TIERS, NODES, Observed(), AggregatorReading(), NOW, settings, "tok", certificates=chain
    )
    assert _kinds(plan).count("Certificate") == 1
    [secret] = [o for o in plan.create if o["kind"] == "Secret"]
    assert not {"ca.crt", "tls.crt", "tls.key", "ca.key"} & set(secret["data"])
    running = started()
    running = dataclasses.replace(running, aggregator=dataclasses.replace(running.aggregator, tls=True))  # type: ignore[arg-type]
    assert _kinds(run(observed=running, settings=settings)) == ["Certificate"]  # gone: made again
    made = dataclasses.replace(running, certificate=ChildState("job-tls", UID))
    assert "Certificate" not in _kinds(run(observed=made, settings=settings))
    # A plaintext job needs none; a Certificate of someone else is a conflict.
    assert "Certificate" not in _kinds(run(job(aggregator={"tls": {"mode": "Disabled"}}), settings=settings))
    theirs = dataclasses.replace(running, certificate=ChildState("job-tls", "someone-else"))
    assert cond(run(observed=theirs, settings=settings), "Progressing") == ("False", "ChildConflict")


def test_tls_follows_the_running_aggregator_not_a_later_spec() -> None:
    """An aggregator started before TLS existed (no annotation) keeps its trainers plaintext."""
    observed = started()
    observed.tier_jobs.pop("weak")  # re-created: like the aggregator's, plaintext
    [weak] = [o for o in run(observed=observed).create if o["kind"] == "Job"]
    env = {e["name"] for e in weak["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "FLEXTRAIN_TLS_CA" not in env
    tls_aggregator = dataclasses.replace(observed.aggregator, tls=True)  # type: ignore[arg-type]
    [weak] = [o for o in run(observed=dataclasses.replace(observed, aggregator=tls_aggregator)).create if o["kind"] == "Job"]
    assert "FLEXTRAIN_TLS_CA" in {e["name"] for e in weak["spec"]["template"]["spec"]["containers"][0]["env"]}
