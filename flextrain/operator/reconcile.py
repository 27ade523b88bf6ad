"""reconcile(): one FlexTrainJob, what was observed, and the time -> a Plan.

A pure function: no API calls, no clock, no randomness (the caller passes `now` and a
fresh `token` and, for a TLS job, its `certificates`, used only if the Secret is missing).
The handler applies the Plan:
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

The steps live in steps.py (small pure functions, each returning data), the Plan and
the condition vocabulary in plan.py; this module runs them in order.

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

from collections.abc import Mapping, Sequence
from datetime import datetime

from flextrain.api.conditions import (
    TERMINAL_PHASES,
    ConditionStatus,
    JobConditionType,
    JobPhase,
    JobReason,
)
from flextrain.api.devicetier import DeviceTier
from flextrain.api.flextrainjob import (
    FlexTrainJob,
    FlexTrainJobStatus,
)
from flextrain.jobplan import JobPlan, PlanError
from flextrain.operator import builders, names, policy
from flextrain.operator.certs import Certificates
from flextrain.operator.config import OperatorSettings
from flextrain.operator.observed import FlavorState, Observed, TierJobState
from flextrain.operator.plan import (
    AggregatorReading,
    Conditions,
    CreateFailure,
    Event,
    ObjectPatch,
    Plan,
    job_extra,
    job_uid,
    new_status,
)
from flextrain.operator.steps import (
    accuracy_line,
    aggregator_condition,
    assess_health,
    completion,
    deadline,
    degraded_condition,
    depth_event,
    desired_children,
    effective_job,
    finish_workload,
    job_failure,
    job_phase,
    job_progress,
    kueue_admission,
    merge_patches,
    progressing_conditions,
    resolve_plan,
    seconds_between,
    stop_patches,
    suspension_condition,
    tier_availability,
)
from flextrain.operator.tiers import NodeInfo

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
C = JobConditionType
R = JobReason


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
    flavors: Mapping[str, FlavorState] | None = None,
    certificates: Certificates | None = None,
) -> Plan:
    """The plan for one FlexTrainJob (see the module docstring). `invalid_tiers`: the
    DeviceTiers that exist but do not read into the model, with what is wrong; `refused`:
    the children the API server would not create (the caller retries them with backoff);
    `flavors`: the Kueue ResourceFlavors the job's Workload was admitted with, by name.

    The steps, each a small pure function of steps.py: the tiers in effect, their
    DeviceTiers and nodes, the depths, the children, progress, the aggregator, health
    (quorum and deadline), degradation, suspension, the phase, why progress stops,
    completion."""
    now = now.replace(microsecond=0)
    prev = status or FlexTrainJobStatus()
    if job_extra(job, "deletionTimestamp"):
        return Plan(status=prev)  # children go with it (ownerReferences)
    if prev.phase in TERMINAL_PHASES:
        return _finished(job, prev, observed, reading, now, settings)

    generation = job_extra(job, "generation")
    conds = Conditions(prev.conditions, now, generation if isinstance(generation, int) else None)
    name, ns = job.metadata.name, job.metadata.namespace or "default"
    base = dict(
        total_rounds=job.spec.training.rounds,
        aggregator_endpoint=settings.address_of(ns, name, names.aggregator_name(name)),
        observed_generation=conds.generation,
    )
    effective = effective_job(job, observed)
    started = prev.start_time is not None or observed.any_child

    # 0. The tenancy policy: a job that asks for what it may not gets nothing created
    # (a running job edited into it keeps what exists, and gets nothing new).
    broken = "; ".join(str(v) for v in policy.violations(job, settings))
    if broken:
        conds.set(C.PROGRESSING, F, R.POLICY_VIOLATION, broken)
        if not started:
            new = new_status(prev, phase=JobPhase.PENDING, conditions=conds.finish(), **base)
            return Plan(status=new, events=conds.events)

    # 1. DeviceTiers, nodes and depths.
    missing, verdict = tier_availability(effective, device_tiers, nodes, invalid_tiers, started)
    conds.apply(verdict)
    clean = builders.plain_job(effective)
    plan: JobPlan | None = None
    if not missing or started:
        try:
            plan = resolve_plan(clean, prev, observed, device_tiers)
        except PlanError as exc:
            conds.set(C.TIERS_AVAILABLE, F, R.DEPTH_UNSATISFIABLE, str(exc))
    if plan is None:
        # Nothing can be built yet: wait (a DeviceTier or node event wakes us up).
        new = new_status(prev, phase=JobPhase.PENDING, conditions=conds.finish(), **base)
        return Plan(status=new, events=conds.events)
    events = [e for e in (depth_event(prev, plan),) if e]

    # 2. Kueue's admission (jobs with spec.queueName), children, 3. progress and the
    # aggregator.
    admission = kueue_admission(job, plan, observed, device_tiers, flavors or {}, settings, now)
    conds.apply(admission.verdict)
    held = admission.held
    children = desired_children(
        job, clean, plan, observed, device_tiers, settings, token, admission, certificates
    )
    progress = job_progress(job, plan, observed, reading, prev, now, held=held)
    was_ready = conds.status_of(C.AGGREGATOR_READY) == T
    endpoint = str(base["aggregator_endpoint"])
    available, verdict = aggregator_condition(
        observed, reading, job, children.replicas, was_ready, endpoint, now, settings.claim_pending_after,
        held=held,
    )
    conds.apply(verdict)
    lost_aggregator = not available and was_ready and not job.spec.suspend

    # 4. Health: quorum and deadline; degradation and suspension.
    health = assess_health(job, plan, observed, reading)
    requeue, deadline_passed = deadline(job, progress.start_time, now, done=health.done)
    failure = job_failure(job, health, deadline_passed)
    conds.apply(degraded_condition(health, lost_aggregator, started or bool(children.create)))
    conds.apply(
        suspension_condition(job, children.replicas, conds.status_of(C.SUSPENDED), progress.round)
    )

    # 5. Phase, progress conditions, completion.
    phase = job_phase(
        failure, health.done, job, conds.status_of(C.DEGRADED) == T, available, progress,
        held=held,
    )
    conds.apply(
        *progressing_conditions(
            phase, job, progress, children, observed, refused, tiers_edited=effective is not job
        )
    )
    patches, completion_time = children.patches, prev.completion_time
    location, model = prev.model_location, prev.model
    if phase in TERMINAL_PHASES:
        completion_time = now
        end = completion(job, phase, progress.round, failure, settings, requeue)
        conds.apply(*end.conditions)
        if phase == JobPhase.SUCCEEDED:
            model = end.model_location
            location = model.checkpoint if model else None
        requeue = end.requeue
        if phase == JobPhase.FAILED:
            patches = merge_patches(patches, stop_patches(job, observed, job_uid(job)))
        patches = [*patches, *finish_workload(job, observed, phase, now)]
    if broken:
        conds.set(C.PROGRESSING, F, R.POLICY_VIOLATION, broken)
    new = new_status(
        prev,
        phase=phase,
        round=progress.round,
        tiers_ready=progress.tiers_ready,
        best_accuracy=progress.best_accuracy,
        accuracy=progress.accuracy,
        accuracy_by_depth=accuracy_line(progress.accuracy),
        tiers=progress.tiers,
        conditions=conds.finish(),
        start_time=progress.start_time,
        completion_time=completion_time,
        model_location=location,
        model=model,
        **base,
    )
    return Plan(
        status=new,
        create=children.create if phase not in TERMINAL_PHASES and not broken else [],
        patch=patches,
        events=events + conds.events,
        requeue_after=requeue,
    )


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
    since = seconds_between(now, completed)
    requeue: float | None = None
    patches: list[ObjectPatch] = []
    trainers_done = all(s.finished or s.suspended for s in observed.tier_jobs.values())
    if prev.phase == JobPhase.FAILED or trainers_done or since >= settings.finish_grace:
        patches = stop_patches(job, observed, uid)
    else:
        requeue = settings.finish_grace - since
    assert prev.phase is not None
    patches += finish_workload(job, observed, prev.phase, now)
    conds = Conditions(prev.conditions, now, prev.observed_generation)
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
    new = new_status(
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
    conds = Conditions(prev.conditions, now, prev.observed_generation)
    conds.set(C.FAILED, T, R.SPEC_INVALID, message)
    new = new_status(
        prev,
        phase=JobPhase.FAILED,
        conditions=conds.finish(),
        completion_time=prev.completion_time or now,
    )
    return new, conds.events
