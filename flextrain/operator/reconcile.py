"""reconcile(): one FlexTrainJob, what was observed, and the time -> a Plan.

A pure function: no API calls, no clock, no randomness (the caller passes `now` and a
fresh `token`, used only if the Secret is missing). The handler applies the Plan:
creates the missing children, patches the few fields the operator owns on existing
ones (`spec.suspend` of tier Jobs, `spec.replicas` of the aggregator), posts the Events,
and writes the status only when it differs from the stored one.

Existing children are never replaced or re-templated: a child the user edited keeps the
edit, and a child with the right name that this job does not control is left alone
(condition Progressing=False, reason ChildConflict). The aggregator and the trainers read
the job's token from its Secret, so they are planned only once the job owns that Secret:
the caller creates a missing Secret first and plans again; with a Secret of someone else
nothing that reads it is created, and what runs is stopped. Creates the API server
refused (`refused`, from the caller) become Progressing=False with the server's reason.

Phases (see docs/operator.md for the full table):
  Pending    DeviceTiers missing, or the aggregator / trainers are starting
  Running    the aggregator is available and every tier has a ready trainer (or a round
             has completed)
  Degraded   a tier's Job failed or its pods cannot be scheduled, or the aggregator went
             away, while the quorum can still be met
  Suspended  spec.suspend
  Succeeded  the aggregator reports training done, or every tier Job completed
  Failed     the quorum cannot be met any more (QuorumLost), activeDeadlineSeconds passed
             (DeadlineExceeded), or the spec cannot be read (SpecInvalid)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from flextrain.api.common import Condition
from flextrain.api.conditions import (
    TERMINAL_PHASES,
    ConditionStatus,
    JobConditionType,
    JobPhase,
    JobReason,
)
from flextrain.api.devicetier import DeviceTier
from flextrain.api.flextrainjob import (
    KIND,
    DepthAccuracy,
    FlexTrainJob,
    FlexTrainJobStatus,
    TierSpec,
    TierStatus,
)
from flextrain.jobplan import JobPlan, PlanError, plan_job, plan_with_depths
from flextrain.operator import builders, names
from flextrain.operator.config import OperatorSettings
from flextrain.operator.observed import Observed, TierJobState
from flextrain.operator.status import changed, get_condition, set_condition
from flextrain.operator.tiers import NodeInfo, ready_matching
from flextrain.wire.status import AggregatorStatus

JSON = dict[str, Any]
T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
C = JobConditionType
R = JobReason


@dataclass(frozen=True)
class ObjectPatch:
    """A JSON merge patch for one existing child."""

    api_version: str
    kind: str
    name: str
    namespace: str
    body: JSON


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about the FlexTrainJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    """What to do for one job: children to create and patch, Events, the new status."""

    status: FlexTrainJobStatus
    create: list[JSON] = field(default_factory=list)
    patch: list[ObjectPatch] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Delete the FlexTrainJob itself (ttlSecondsAfterFinished passed).
    delete_job: bool = False
    #: Reconcile again after this many seconds at the latest (deadline, TTL, grace).
    requeue_after: float | None = None


@dataclass(frozen=True)
class AggregatorReading:
    """The aggregator's GetStatus answer, or why there is none."""

    status: AggregatorStatus | None = None
    error: str | None = None


@dataclass(frozen=True)
class CreateFailure:
    """A child the API server refused to create (or did not answer about)."""

    kind: str
    name: str
    #: HTTP status of the answer; 0 when there was none.
    status: int
    #: The API server's reason (Invalid, Forbidden, AlreadyExists, ...), may be empty.
    reason: str
    message: str

    @property
    def condition_reason(self) -> str:
        if self.status == 422:
            return R.CHILD_INVALID
        if self.status == 403:
            return R.CHILD_FORBIDDEN
        if self.status == 409:
            return R.CHILD_CONFLICT
        return R.CHILD_CREATE_FAILED

    def describe(self) -> str:
        """`cannot create Job x: the API server answered 422 Invalid: <its message>`."""
        what = f"cannot create {self.kind} {self.name}"
        if self.status == 0:
            return f"{what}: no answer from the API server ({self.message})"
        answer = f"{self.status} {self.reason}".strip()
        return f"{what}: the API server answered {answer}: {self.message}"


# -- helpers ----------------------------------------------------------------------------


def _extra(job: FlexTrainJob, key: str) -> Any:
    return (job.metadata.model_extra or {}).get(key)


def job_uid(job: FlexTrainJob) -> str:
    return str(_extra(job, "uid") or "")


class _Conditions:
    """Collects condition changes and the Events they deserve."""

    def __init__(self, previous: Sequence[Condition] | None, now: datetime, generation: int | None):
        self.before = {c.type: c for c in previous or ()}
        self.items: list[Condition] = list(previous or ())
        self.now = now
        self.generation = generation
        self.events: list[Event] = []

    def set(self, type_: str, status: str, reason: str, message: str) -> None:
        """Set a condition. A pass may set one type more than once (TiersAvailable: True
        from the nodes, then False from the depth); the transition time compares with the
        condition as stored before the pass, so an unchanged world changes nothing."""
        self.items = set_condition(
            self.items, type_, status, reason, message, now=self.now, generation=self.generation
        )
        stored = self.before.get(type_)
        if stored is not None and stored.status == status:
            self.items = [
                c.model_copy(update={"last_transition_time": stored.last_transition_time})
                if c.type == type_
                else c
                for c in self.items
            ]

    def status_of(self, type_: str) -> str | None:
        c = get_condition(self.items, type_)
        return c.status if c else None

    def finish(self) -> list[Condition]:
        for c in self.items:
            event = _event_for(c.type, self.before.get(c.type), c)
            if event:
                self.events.append(event)
        return self.items


_PROGRESSING_PROBLEMS = frozenset(
    {
        R.TIERS_IMMUTABLE,
        R.CHILD_CONFLICT,
        R.CHILD_INVALID,
        R.CHILD_FORBIDDEN,
        R.CHILD_CREATE_FAILED,
    }
)

_BAD = {
    (C.TIERS_AVAILABLE, F),
    (C.DEGRADED, T),
    (C.FAILED, T),
}


def _event_for(type_: str, before: Condition | None, after: Condition) -> Event | None:
    """Warnings for every new problem; Normal events for news worth a line in describe."""
    if not changed(before, after):
        return None
    bad = (
        (type_, after.status) in _BAD
        or (type_ == C.AGGREGATOR_READY and after.reason == R.AGGREGATOR_UNAVAILABLE)
        or (type_ == C.PROGRESSING and after.reason in _PROGRESSING_PROBLEMS)
    )
    if bad:
        return Event("Warning", after.reason, after.message)
    if type_ == C.PROGRESSING or (type_ == C.AGGREGATOR_READY and after.status == F):
        return None
    if before is None and type_ in (C.TIERS_AVAILABLE, C.DEGRADED):
        return None  # a healthy first observation is not news
    if before is not None and before.status == after.status:
        return None  # only the message moved
    return Event("Normal", after.reason, after.message)


def _new_status(prev: FlexTrainJobStatus, **changes: Any) -> FlexTrainJobStatus:
    return prev.model_copy(update=changes, deep=True)


def _resolve_plan(
    job: FlexTrainJob, prev: FlexTrainJobStatus, observed: Observed, tiers: Mapping[str, DeviceTier]
) -> JobPlan:
    """The depths in use: those the aggregator was started with, else those recorded in
    status, else resolved now (auto from the DeviceTier's capacity). Raises PlanError."""
    names_in_spec = {t.name for t in job.spec.tiers}
    started_with = observed.aggregator.depths if observed.aggregator else None
    if started_with and set(started_with) == names_in_spec:
        return plan_with_depths(job, started_with)
    known = {t.name: t.depth for t in prev.tiers or () if t.depth is not None}
    if set(known) == names_in_spec and (prev.start_time or observed.any_child):
        return plan_with_depths(job, known)
    return plan_job(job, tiers)


def _tier_counts(
    plan_tiers: Sequence[tuple[str, int, int | None, str | None]],
    observed: Observed,
    reading: AggregatorReading,
    prev: FlexTrainJobStatus,
) -> list[TierStatus]:
    pushed = {t.tier: t.last_round_pushed for t in reading.status.tiers} if reading.status else {}
    before = {t.name: t for t in prev.tiers or ()}
    out = []
    for name, replicas, depth, source in plan_tiers:
        state = observed.tier_jobs.get(name)
        last = pushed.get(name, before[name].last_round_pushed if name in before else None)
        out.append(
            TierStatus(
                name=name,
                depth=depth,
                depth_source=source,  # type: ignore[arg-type]
                replicas=replicas,
                ready=state.ready if state else 0,
                failed=state.failed if state else 0,
                last_round_pushed=last,
            )
        )
    return out


def _accuracy(status: AggregatorStatus) -> tuple[list[DepthAccuracy], float | None]:
    entries = [
        DepthAccuracy(depth=d, accuracy=max(0.0, min(1.0, a)), round=r)
        for d, (a, r) in sorted(status.accuracy.items())
    ]
    if not entries:
        return [], None
    latest = max(e.round for e in entries)
    return entries, max(e.accuracy for e in entries if e.round == latest)


def accuracy_line(accuracy: Sequence[DepthAccuracy] | None) -> str | None:
    """`d3=0.975 d9=0.964`: status.accuracyByDepth, the printer column of `kubectl get`."""
    if not accuracy:
        return None
    return " ".join(f"d{a.depth}={a.accuracy:.3f}" for a in sorted(accuracy, key=lambda a: a.depth))


def model_location(job: FlexTrainJob, rounds: int) -> str | None:
    """Where the final checkpoint is: `pvc://<claim>/<subPath>/round-NNNNNN.pt`."""
    ckpt = job.spec.checkpoint
    if not ckpt or not ckpt.persistent_volume_claim:
        return None
    pvc = ckpt.persistent_volume_claim
    sub = f"{pvc.sub_path.strip('/')}/" if pvc.sub_path and pvc.sub_path.strip("/") else ""
    return f"pvc://{pvc.claim_name}/{sub}round-{rounds:06d}.pt"


def _stop_patches(job: FlexTrainJob, observed: Observed, uid: str) -> list[ObjectPatch]:
    """Scale the aggregator to 0 and suspend every tier Job still running."""
    ns = job.metadata.namespace or "default"
    out = []
    agg = observed.aggregator
    if agg and agg.controller_uid == uid and agg.replicas != 0:
        out.append(ObjectPatch("apps/v1", "Deployment", agg.name, ns, {"spec": {"replicas": 0}}))
    for state in observed.tier_jobs.values():
        if state.controller_uid == uid and not state.finished and not state.suspended:
            out.append(ObjectPatch("batch/v1", "Job", state.name, ns, {"spec": {"suspend": True}}))
    return out


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


# -- the reconcile function -------------------------------------------------------------


def reconcile(
    job: FlexTrainJob,
    status: FlexTrainJobStatus | None,
    device_tiers: Mapping[str, DeviceTier],
    nodes: Sequence[NodeInfo],
    observed: Observed,
    reading: AggregatorReading,
    now: datetime,
    settings: OperatorSettings,
    token: str,
    *,
    invalid_tiers: Mapping[str, str] | None = None,
    refused: Sequence[CreateFailure] = (),
) -> Plan:
    """The plan for one FlexTrainJob (see the module docstring). `invalid_tiers`: the
    DeviceTiers that exist but do not read into the model, with what is wrong; `refused`:
    the children the API server would not create (the caller retries them with backoff)."""
    now = now.replace(microsecond=0)
    prev = status or FlexTrainJobStatus()
    generation = _extra(job, "generation")
    generation = generation if isinstance(generation, int) else None
    if _extra(job, "deletionTimestamp"):
        return Plan(status=prev)  # children go with it (ownerReferences)
    if prev.phase in TERMINAL_PHASES:
        return _finished(job, prev, observed, reading, now, settings)

    name, ns = job.metadata.name, job.metadata.namespace or "default"
    uid = job_uid(job)
    owner = names.owner_reference(KIND, name, uid)
    conds = _Conditions(prev.conditions, now, generation)
    service = names.aggregator_name(name)
    base = dict(
        total_rounds=job.spec.training.rounds,
        aggregator_endpoint=settings.address_of(ns, name, service),
        observed_generation=generation,
    )

    # Tiers edited after start (the CRD refuses it; this guards clusters without CEL):
    # keep running with the tiers the aggregator was started with.
    effective = job
    started_tiers = observed.aggregator.tiers if observed.aggregator else None
    if started_tiers is not None and started_tiers != builders.tiers_wire(job):
        effective = job.model_copy(
            update={
                "spec": job.spec.model_copy(
                    update={"tiers": [TierSpec.model_validate(t) for t in started_tiers]}
                )
            }
        )
    tiers_edited = effective is not job
    started = prev.start_time is not None or observed.any_child

    # 1. DeviceTiers and depths.
    missing = [t for t in effective.spec.tiers if t.device_tier_ref not in device_tiers]
    no_nodes = [
        t
        for t in effective.spec.tiers
        if t.device_tier_ref in device_tiers
        and ready_matching(device_tiers[t.device_tier_ref], nodes) == 0
    ]
    if missing:
        broken = invalid_tiers or {}
        invalid = [t for t in missing if t.device_tier_ref in broken]
        absent = [t for t in missing if t.device_tier_ref not in broken]
        parts = [
            f"DeviceTier {t.device_tier_ref!r} (tier {t.name!r}) exists but is invalid: "
            f"{broken[t.device_tier_ref]}; fix it (kubectl edit devicetier {t.device_tier_ref})"
            for t in invalid
        ]
        if absent:
            refs = ", ".join(f"tier {t.name!r} -> DeviceTier {t.device_tier_ref!r}" for t in absent)
            parts.append(f"DeviceTier not found: {refs}")
        waits_for = "exists" if not invalid else "is valid" if not absent else "exists and is valid"
        conds.set(
            C.TIERS_AVAILABLE,
            F,
            R.TIER_INVALID if invalid else R.TIER_NOT_FOUND,
            "; ".join(parts)
            + "; "
            + (
                f"the tier's trainers cannot be created until it {waits_for}"
                if started
                else f"the job starts when it {waits_for}"
            ),
        )
    elif no_nodes:
        refs = ", ".join(f"DeviceTier {t.device_tier_ref!r} (tier {t.name!r})" for t in no_nodes)
        conds.set(
            C.TIERS_AVAILABLE,
            F,
            R.NO_MATCHING_NODES,
            f"no Ready node matches {refs}; its trainer pods stay Pending until one does",
        )
    else:
        counts = {
            t.device_tier_ref: ready_matching(device_tiers[t.device_tier_ref], nodes)
            for t in effective.spec.tiers
        }
        conds.set(
            C.TIERS_AVAILABLE,
            T,
            R.TIERS_AVAILABLE,
            "every DeviceTier matches Ready nodes: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(counts.items())),
        )

    clean = builders.plain_job(effective)
    try:
        plan = (
            _resolve_plan(clean, prev, observed, device_tiers) if not missing or started else None
        )
    except PlanError as exc:
        conds.set(C.TIERS_AVAILABLE, F, R.DEPTH_UNSATISFIABLE, str(exc))
        plan = None
    if plan is None:
        # Nothing can be built yet: wait (a DeviceTier or node event wakes us up).
        new = _new_status(prev, phase=JobPhase.PENDING, conditions=conds.finish(), **base)
        return Plan(status=new, events=conds.events)

    events: list[Event] = []
    first_depths = not prev.tiers or any(t.depth is None for t in prev.tiers)
    if first_depths and any(t.depth_source == "auto" for t in plan.tiers):
        detail = ", ".join(
            f"{t.name}={t.depth} ({t.depth_source}"
            + (f" from DeviceTier {t.device_tier} capacity" if t.depth_source == "auto" else "")
            + ")"
            for t in plan.tiers
        )
        events.append(Event("Normal", R.DEPTH_CHOSEN, f"tier depths: {detail}"))

    # 2. Children: create what is missing, patch what we own, leave the rest alone.
    create: list[JSON] = []
    patches: list[ObjectPatch] = []
    conflicts: list[str] = []

    def owned(state: Any, what: str) -> bool:
        if state.controller_uid == uid:
            return True
        conflicts.append(f"{what} {state.name}")
        return False

    suspend = bool(job.spec.suspend)
    # The aggregator and the trainers read the token from the Secret: they are created
    # (and kept running) only while this job owns it.
    secret_ours = observed.secret is not None and observed.secret.controller_uid == uid
    if observed.secret is None:
        create.append(builders.build_secret(clean, token, owner))
    else:
        owned(observed.secret, "Secret")
    if observed.service is None:
        create.append(builders.build_aggregator_service(clean, owner, settings))
    else:
        owned(observed.service, "Service")
    want_replicas = builders.aggregator_replicas(job)
    if not secret_ours:
        # Nothing that reads a Secret the job does not own; what runs already is stopped.
        if observed.aggregator is not None:
            owned(observed.aggregator, "Deployment")
        for existing in observed.tier_jobs.values():
            owned(existing, "Job")
        if observed.secret is not None:
            patches = _stop_patches(job, observed, uid)
    elif observed.aggregator is None:
        create.append(
            builders.build_aggregator_deployment(plan, owner, settings, replicas=want_replicas)
        )
    elif owned(observed.aggregator, "Deployment") and observed.aggregator.replicas != want_replicas:
        patches.append(
            ObjectPatch(
                "apps/v1",
                "Deployment",
                observed.aggregator.name,
                ns,
                {"spec": {"replicas": want_replicas}},
            )
        )
    for tier in plan.tiers if secret_ours else ():
        state = observed.tier_jobs.get(tier.name)
        if state is None:
            if tier.device_tier in device_tiers:
                create.append(
                    builders.build_tier_job(
                        plan, tier, device_tiers[tier.device_tier], owner, settings, suspend=suspend
                    )
                )
        elif owned(state, "Job") and not state.finished and state.suspended != suspend:
            patches.append(
                ObjectPatch("batch/v1", "Job", state.name, ns, {"spec": {"suspend": suspend}})
            )

    # 3. Observations -> status.
    tier_rows = [(t.name, t.replicas, t.depth, t.depth_source) for t in plan.tiers]
    tier_status = _tier_counts(tier_rows, observed, reading, prev)
    round_, accuracy, best = prev.round, prev.accuracy, prev.best_accuracy
    if reading.status is not None:
        round_ = reading.status.round
        acc, best_now = _accuracy(reading.status)
        if acc:
            accuracy, best = acc, best_now
    start_time = prev.start_time
    resumed = prev.phase == JobPhase.SUSPENDED and not suspend
    if not suspend and (start_time is None or resumed):
        start_time = now  # the deadline counts from here (reset on resume, as for Jobs)

    agg = observed.aggregator
    agg_available = bool(agg and agg.available >= 1) or reading.status is not None
    was_ready = conds.status_of(C.AGGREGATOR_READY) == T
    if agg_available:
        conds.set(
            C.AGGREGATOR_READY,
            T,
            R.AGGREGATOR_READY,
            f"the aggregator answers on {base['aggregator_endpoint']}",
        )
    elif suspend and want_replicas == 0:
        conds.set(
            C.AGGREGATOR_READY,
            F,
            R.AGGREGATOR_STOPPED,
            "the aggregator is scaled to 0 while suspended; it resumes from its checkpoint",
        )
    elif was_ready:
        why = (agg.failure if agg else None) or reading.error or "no available replica"
        conds.set(
            C.AGGREGATOR_READY,
            F,
            R.AGGREGATOR_UNAVAILABLE,
            f"the aggregator {service} is not available: {why}",
        )
    else:
        conds.set(
            C.AGGREGATOR_READY,
            F,
            R.AGGREGATOR_STARTING,
            f"waiting for Deployment {service} to have an available replica"
            + (f" ({agg.failure})" if agg and agg.failure else ""),
        )
    aggregator_lost = not agg_available and was_ready and not suspend

    # Quorum: replicas that failed for good (a failed tier Job, failed indexes) are lost;
    # unschedulable ones may still come (nodes can appear).
    total = sum(t.replicas for t in plan.tiers)
    need = max(1, math.ceil(job.spec.aggregation.quorum * total - 1e-9))
    lost: dict[str, tuple[int, str]] = {}
    for tier in plan.tiers:
        state = observed.tier_jobs.get(tier.name)
        if state is None:
            continue
        if state.failed_reason:
            why = f"Job {state.name} failed ({state.failed_reason}"
            why += f": {state.failed_message})" if state.failed_message else ")"
            lost[tier.name] = (tier.replicas, why)
        elif state.failed_indexes:
            n = min(state.failed_indexes, tier.replicas)
            lost[tier.name] = (n, f"{n} of {tier.replicas} replicas failed permanently")
    unschedulable: dict[str, list[str]] = {}
    for pod in observed.pods:
        if pod.unschedulable and pod.tier in {t.name for t in plan.tiers}:
            unschedulable.setdefault(pod.tier, []).append(pod.message)
    can_train = total - sum(n for n, _ in lost.values())
    done = bool(reading.status and reading.status.done) or (
        bool(plan.tiers)
        and all(
            (s := observed.tier_jobs.get(t.name)) is not None and s.complete for t in plan.tiers
        )
    )

    # Deadline (does not run while suspended; restarts on resume).
    requeue: float | None = None
    deadline_passed = False
    if job.spec.active_deadline_seconds and start_time and not suspend and not done:
        left = job.spec.active_deadline_seconds - _seconds(now, start_time)
        deadline_passed = left <= 0
        requeue = None if deadline_passed else left

    failure: tuple[str, str] | None = None
    if deadline_passed:
        failure = (
            R.DEADLINE_EXCEEDED,
            f"the job ran longer than activeDeadlineSeconds={job.spec.active_deadline_seconds}",
        )
    elif lost and can_train < need and not done:
        failure = (
            R.QUORUM_LOST,
            "; ".join(f"tier {k}: {why}" for k, (_, why) in sorted(lost.items()))
            + f"; {can_train} of {total} devices can still train, the quorum "
            f"({job.spec.aggregation.quorum:g}) needs {need}",
        )

    # Degraded: named tiers, quorum still reachable.
    if lost:
        msg = "; ".join(f"tier {k}: {why}" for k, (_, why) in sorted(lost.items()))
        msg += (
            f"; training continues on quorum: {can_train} of {total} devices, quorum needs {need}"
        )
        if unschedulable:
            msg += "; " + _unschedulable_message(unschedulable)
        conds.set(C.DEGRADED, T, R.TIER_JOB_FAILED, msg)
    elif unschedulable:
        conds.set(C.DEGRADED, T, R.PODS_UNSCHEDULABLE, _unschedulable_message(unschedulable))
    elif aggregator_lost:
        conds.set(
            C.DEGRADED,
            T,
            R.AGGREGATOR_UNAVAILABLE,
            "the aggregator went away; trainers retry until it is back",
        )
    elif started or create:
        conds.set(C.DEGRADED, F, R.ALL_TIERS_HEALTHY, "no tier has failed or unschedulable pods")
    degraded = conds.status_of(C.DEGRADED) == T

    # Suspension.
    if suspend:
        keeps = (
            "the aggregator is scaled to 0 and resumes from its checkpoint claim"
            if want_replicas == 0
            else "the aggregator keeps running to hold the model (no checkpoint claim)"
        )
        conds.set(
            C.SUSPENDED,
            T,
            R.SUSPENDED,
            f"spec.suspend is true: every tier Job is suspended; {keeps}",
        )
    elif get_condition(conds.items, C.SUSPENDED) is not None:
        conds.set(
            C.SUSPENDED,
            F,
            R.RESUMED,
            f"resumed: trainers continue from the aggregator's model (round {round_ or 0})",
        )

    # Phase.
    ready_tiers = sum(1 for t in tier_status if t.replicas and t.ready >= t.replicas)
    all_training = all(t.ready >= 1 for t in tier_status) or bool(round_)
    phase: JobPhase
    if failure:
        phase = JobPhase.FAILED
    elif done:
        phase = JobPhase.SUCCEEDED
    elif suspend:
        phase = JobPhase.SUSPENDED
    elif degraded:
        phase = JobPhase.DEGRADED
    elif agg_available and all_training:
        phase = JobPhase.RUNNING
    else:
        phase = JobPhase.PENDING

    total_rounds = job.spec.training.rounds
    if phase == JobPhase.SUSPENDED:
        conds.set(C.PROGRESSING, F, R.SUSPENDED, "suspended")
    elif round_:
        conds.set(
            C.PROGRESSING, T, R.ROUND_COMPLETED, f"round {round_} of {total_rounds} completed"
        )
    else:
        waiting = ", ".join(f"{t.name} {t.ready}/{t.replicas}" for t in tier_status)
        conds.set(C.PROGRESSING, T, R.TRAINERS_STARTING, f"trainers ready: {waiting}")
    if conflicts:
        foreign_secret = observed.secret is not None and not secret_ours
        conds.set(
            C.PROGRESSING,
            F,
            R.CHILD_CONFLICT,
            f"{', '.join(conflicts)} exist(s) but belong(s) to something else; delete or "
            "rename them, the operator never takes over objects it did not create"
            + (
                f"; no aggregator or trainer is created or kept running while Secret "
                f"{observed.secret.name} is not the job's (they would read its token)"
                if foreign_secret and observed.secret is not None
                else ""
            ),
        )
    if refused:
        waits = (
            "; the aggregator and the trainers are created once the Secret exists"
            if any(f.kind == "Secret" for f in refused)
            else ""
        )
        conds.set(
            C.PROGRESSING,
            F,
            refused[0].condition_reason,
            "; ".join(f.describe() for f in refused)
            + waits
            + "; the operator retries with backoff (at once when what it would create changes)",
        )
    if tiers_edited:
        conds.set(
            C.PROGRESSING,
            F,
            R.TIERS_IMMUTABLE,
            "spec.tiers changed after the job started; the job keeps running with the "
            "tiers it started with. Tiers are immutable: delete the FlexTrainJob and "
            "create it again (or create a new one) to change them",
        )

    completion_time = prev.completion_time
    location = prev.model_location
    if phase in TERMINAL_PHASES:
        completion_time = now
        if phase == JobPhase.SUCCEEDED:
            location = model_location(job, round_ or total_rounds)
            kept = (
                f"; the final model is at {location}"
                if location
                else "; the job has no checkpoint claim, so the final model is not kept after "
                "the aggregator stops (set spec.checkpoint.persistentVolumeClaim)"
            )
            conds.set(
                C.COMPLETE, T, R.TRAINING_COMPLETE, f"all {total_rounds} rounds completed" + kept
            )
            conds.set(C.PROGRESSING, F, R.TRAINING_COMPLETE, "training complete")
            requeue = settings.finish_grace
        else:
            assert failure is not None
            conds.set(C.FAILED, T, failure[0], failure[1])
            conds.set(C.PROGRESSING, F, failure[0], "training stopped")
            patches = _merge_patches(patches, _stop_patches(job, observed, uid))
        if job.spec.ttl_seconds_after_finished is not None:
            ttl = float(job.spec.ttl_seconds_after_finished)
            requeue = ttl if requeue is None else min(requeue, ttl)

    new = _new_status(
        prev,
        phase=phase,
        round=round_,
        tiers_ready=f"{ready_tiers}/{len(tier_status)}",
        best_accuracy=best,
        accuracy=accuracy,
        accuracy_by_depth=accuracy_line(accuracy),
        tiers=tier_status,
        conditions=conds.finish(),
        start_time=start_time,
        completion_time=completion_time,
        model_location=location,
        **base,
    )
    return Plan(
        status=new,
        create=create if phase not in TERMINAL_PHASES else [],
        patch=patches,
        events=events + conds.events,
        requeue_after=requeue,
    )


def _unschedulable_message(unschedulable: Mapping[str, list[str]]) -> str:
    parts = []
    for tier, messages in sorted(unschedulable.items()):
        first = next((m for m in messages if m), "")
        parts.append(
            f"tier {tier}: {len(messages)} pod(s) cannot be scheduled"
            + (f" ({first})" if first else "")
        )
    return "; ".join(parts)


def _merge_patches(first: list[ObjectPatch], second: list[ObjectPatch]) -> list[ObjectPatch]:
    """`second` wins for the same object (a stop patch replaces a suspend/replicas patch)."""
    keyed = {(p.kind, p.name): p for p in first}
    keyed.update({(p.kind, p.name): p for p in second})
    return list(keyed.values())


def _finished(
    job: FlexTrainJob,
    prev: FlexTrainJobStatus,
    observed: Observed,
    reading: AggregatorReading,
    now: datetime,
    settings: OperatorSettings,
) -> Plan:
    """A Succeeded or Failed job: make sure nothing keeps running, refresh the tier
    counts, and delete the job when its TTL has passed."""
    uid = job_uid(job)
    completed = prev.completion_time or now
    since = _seconds(now, completed)
    requeue: float | None = None
    patches: list[ObjectPatch] = []
    trainers_done = all(s.finished or s.suspended for s in observed.tier_jobs.values())
    if prev.phase == JobPhase.FAILED or trainers_done or since >= settings.finish_grace:
        patches = _stop_patches(job, observed, uid)
    else:
        requeue = settings.finish_grace - since
    conds = _Conditions(prev.conditions, now, prev.observed_generation)
    agg = observed.aggregator
    if agg and agg.replicas == 0 and not patches:
        conds.set(
            C.AGGREGATOR_READY,
            F,
            R.AGGREGATOR_STOPPED,
            "the aggregator was stopped when the job finished",
        )
    tiers = []
    for t in prev.tiers or ():
        state: TierJobState | None = observed.tier_jobs.get(t.name)
        tiers.append(
            t.model_copy(
                update={
                    "ready": state.ready if state else 0,
                    "failed": state.failed if state else t.failed,
                }
            )
        )
    ready = sum(1 for t in tiers if t.replicas and t.ready >= t.replicas)
    new = _new_status(
        prev,
        tiers=tiers or prev.tiers,
        tiers_ready=f"{ready}/{len(tiers)}",
        conditions=conds.finish(),
    )
    delete = False
    events = conds.events
    ttl = job.spec.ttl_seconds_after_finished
    if ttl is not None:
        left = ttl - since
        if left <= 0:
            delete = True
            events.append(
                Event(
                    "Normal",
                    R.TTL_EXPIRED,
                    f"deleting the job: ttlSecondsAfterFinished={ttl} passed",
                )
            )
        else:
            requeue = left if requeue is None else min(requeue, left)
    return Plan(status=new, patch=patches, events=events, delete_job=delete, requeue_after=requeue)


def invalid_spec_status(
    status: FlexTrainJobStatus | None, message: str, now: datetime
) -> tuple[FlexTrainJobStatus, list[Event]]:
    """The status of a job whose spec the operator cannot read (e.g. the CRD and the
    operator disagree on the API): Failed with reason SpecInvalid."""
    now = now.replace(microsecond=0)
    prev = status or FlexTrainJobStatus()
    conds = _Conditions(prev.conditions, now, prev.observed_generation)
    conds.set(C.FAILED, T, R.SPEC_INVALID, message)
    new = _new_status(
        prev,
        phase=JobPhase.FAILED,
        conditions=conds.finish(),
        completion_time=prev.completion_time or now,
    )
    return new, conds.events
