"""The steps of reconcile(), each a small pure function of the job and what was
observed: the tiers in effect, their DeviceTiers and nodes, the depths, the children,
progress, the aggregator, health (quorum and deadline), degradation, suspension, the
phase, why progress stops and how the job ends. Each returns data (a Verdict for a
condition, a small dataclass for more); reconcile() applies them in order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flextrain.api.conditions import (
    ConditionStatus,
    JobConditionType,
    JobPhase,
    JobReason,
)
from flextrain.api.devicetier import DeviceTier
from flextrain.api.flextrainjob import (
    AGGREGATOR_POD_SET,
    KIND,
    DepthAccuracy,
    FlexTrainJob,
    FlexTrainJobStatus,
    ModelLocation,
    TierSpec,
    TierStatus,
    quorum_count,
)
from flextrain.contract.env import EXPORTS_DIR
from flextrain.jobplan import JobPlan, plan_job, plan_with_depths
from flextrain.operator import builders, names
from flextrain.operator.certs import Certificates
from flextrain.operator.config import OperatorSettings
from flextrain.operator.observed import FlavorState, Observed, WorkloadState
from flextrain.operator.plan import (
    JSON,
    AggregatorReading,
    CreateFailure,
    Event,
    ObjectPatch,
    Verdict,
    job_uid,
)
from flextrain.operator.tiers import NodeInfo, ready_matching
from flextrain.wire.status import AggregatorStatus

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
C = JobConditionType
R = JobReason


def resolve_plan(
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


def model_location(job: FlexTrainJob, rounds: int) -> ModelLocation | None:
    """Where the final checkpoint and the per-tier exports are:
    `pvc://<claim>/<subPath>/round-NNNNNN.pt` and `pvc://<claim>/<subPath>/models/`."""
    claim = builders.checkpoint_claim(job)
    if claim is None:
        return None
    name, sub_path = claim
    sub = f"{sub_path.strip('/')}/" if sub_path and sub_path.strip("/") else ""
    return ModelLocation(
        claim=name,
        checkpoint=f"pvc://{name}/{sub}round-{rounds:06d}.pt",
        exports=f"pvc://{name}/{sub}{EXPORTS_DIR}/",
    )


def stop_patches(job: FlexTrainJob, observed: Observed, uid: str) -> list[ObjectPatch]:
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


def seconds_between(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


# -- the steps ----------------------------------------------------------------------------


def effective_job(job: FlexTrainJob, observed: Observed) -> FlexTrainJob:
    """The job with the tiers its aggregator was started with: tiers edited after the
    start (the CRD refuses it; this guards clusters without CEL) are not followed."""
    started_tiers = observed.aggregator.tiers if observed.aggregator else None
    if started_tiers is None or started_tiers == builders.tiers_wire(job):
        return job
    tiers = [TierSpec.model_validate(t) for t in started_tiers]
    return job.model_copy(update={"spec": job.spec.model_copy(update={"tiers": tiers})})


def tier_availability(
    job: FlexTrainJob,
    device_tiers: Mapping[str, DeviceTier],
    nodes: Sequence[NodeInfo],
    invalid_tiers: Mapping[str, str] | None,
    started: bool,
) -> tuple[bool, Verdict]:
    """(a DeviceTier is missing or invalid, condition TiersAvailable)."""
    missing = [t for t in job.spec.tiers if t.device_tier_ref not in device_tiers]
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
        waits = (
            f"the tier's trainers cannot be created until it {waits_for}"
            if started
            else f"the job starts when it {waits_for}"
        )
        reason = R.TIER_INVALID if invalid else R.TIER_NOT_FOUND
        return True, Verdict(C.TIERS_AVAILABLE, F, reason, "; ".join([*parts, waits]))
    counts = {
        t.device_tier_ref: ready_matching(device_tiers[t.device_tier_ref], nodes)
        for t in job.spec.tiers
    }
    no_nodes = [t for t in job.spec.tiers if counts[t.device_tier_ref] == 0]
    if no_nodes:
        refs = ", ".join(f"DeviceTier {t.device_tier_ref!r} (tier {t.name!r})" for t in no_nodes)
        message = f"no Ready node matches {refs}; its trainer pods stay Pending until one does"
        return False, Verdict(C.TIERS_AVAILABLE, F, R.NO_MATCHING_NODES, message)
    matching = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items()))
    message = f"every DeviceTier matches Ready nodes: {matching}"
    return False, Verdict(C.TIERS_AVAILABLE, T, R.TIERS_AVAILABLE, message)


def depth_event(prev: FlexTrainJobStatus, plan: JobPlan) -> Event | None:
    """DepthChosen, once, when `depth: auto` was first resolved."""
    first_depths = not prev.tiers or any(t.depth is None for t in prev.tiers)
    if not first_depths or not any(t.depth_source == "auto" for t in plan.tiers):
        return None
    detail = ", ".join(
        f"{t.name}={t.depth} ({t.depth_source}"
        + (f" from DeviceTier {t.device_tier} capacity" if t.depth_source == "auto" else "")
        + ")"
        for t in plan.tiers
    )
    return Event("Normal", R.DEPTH_CHOSEN, f"tier depths: {detail}")


@dataclass(frozen=True)
class Admission:
    """Kueue's say on a job: whether its pods may run, where, and what the job's Workload
    needs (jobs without spec.queueName are always admitted, with no placement)."""

    admitted: bool
    verdict: Verdict | None = None
    #: Pod set (tier name, or `aggregator`) -> where Kueue admitted it.
    placements: Mapping[str, builders.Placement] = field(default_factory=dict)
    create: list[JSON] = field(default_factory=list)
    patches: list[ObjectPatch] = field(default_factory=list)

    @property
    def held(self) -> bool:
        """The job waits for Kueue: no pod of it may run."""
        return not self.admitted


NOT_QUEUED = Admission(admitted=True)


def _kueue_condition(type_: str, status: str, reason: str, message: str, now: datetime) -> JSON:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _workload_status_patch(
    workload: WorkloadState, ns: str, conditions: list[JSON], **status: Any
) -> ObjectPatch:
    """A status patch of the Workload's conditions (merge patch: the whole list, so the
    stored ones are kept), refused (409) if Kueue changed the Workload meanwhile."""
    keep = [dict(c) for c in workload.conditions if c.get("type") not in {c["type"] for c in conditions}]
    body: JSON = {"status": {**status, "conditions": [*keep, *conditions]}}
    if workload.resource_version:
        body["metadata"] = {"resourceVersion": workload.resource_version}
    return ObjectPatch(names.KUEUE_API_VERSION, "Workload", workload.name, ns, body, "status")


def kueue_admission(
    job: FlexTrainJob,
    plan: JobPlan,
    observed: Observed,
    device_tiers: Mapping[str, DeviceTier],
    flavors: Mapping[str, FlavorState],
    settings: OperatorSettings,
    now: datetime,
) -> Admission:
    """A job with spec.queueName runs only while Kueue admits its Workload (one pod set
    per tier and the aggregator's: all at once or none). Creates the Workload, keeps its
    spec.active in step with spec.suspend, and after an eviction gives the quota back once
    the job's pods are stopped (what Kueue's own job integrations do)."""
    queue = job.spec.queue_name
    if queue is None:
        return NOT_QUEUED
    if not settings.kueue:
        message = (
            f"spec.queueName is {queue!r} but the operator's Kueue integration is off (chart "
            "value kueue.enabled, FLEXTRAIN_OPERATOR_KUEUE): nothing of the job runs until it "
            "is on"
        )
        return Admission(False, Verdict(C.ADMITTED, F, R.KUEUE_DISABLED, message))
    uid = job_uid(job)
    ns = job.metadata.namespace or "default"
    workload = observed.workload
    wanted = names.workload_name(job.metadata.name)
    if workload is None:
        missing = [t.device_tier for t in plan.tiers if t.device_tier not in device_tiers]
        if missing:
            message = f"the Workload is created once DeviceTier(s) {', '.join(sorted(set(missing)))} exist"
            return Admission(False, Verdict(C.ADMITTED, F, R.QUEUED, message))
        owner = names.owner_reference(KIND, job.metadata.name, uid)
        body = builders.build_workload(plan, device_tiers, owner, settings)
        message = (
            f"waiting in LocalQueue {queue} for Kueue to admit every tier and the aggregator "
            f"at once (Workload {wanted})"
        )
        return Admission(False, Verdict(C.ADMITTED, F, R.QUEUED, message), create=[body])
    if workload.controller_uid != uid:
        message = (
            f"Workload {workload.name} exists but belongs to something else; delete or rename "
            "it, the operator never takes over objects it did not create"
        )
        return Admission(False, Verdict(C.ADMITTED, F, R.CHILD_CONFLICT, message))
    patches: list[ObjectPatch] = []
    active = not job.spec.suspend
    if workload.active != active:
        body = {"spec": {"active": active}}
        patches.append(ObjectPatch(names.KUEUE_API_VERSION, "Workload", workload.name, ns, body))
    if workload.admitted and workload.evicted is None and active:
        placements: dict[str, builders.Placement] = {}
        unknown: list[str] = []
        for pod_set, assigned in workload.flavors.items():
            labels: dict[str, str] = {}
            tolerations: list[JSON] = []
            for flavor in assigned:
                if flavor not in flavors:
                    unknown.append(flavor)
                    continue
                labels.update(flavors[flavor].node_labels)
                tolerations += [dict(t) for t in flavors[flavor].tolerations if dict(t) not in tolerations]
            placements[pod_set] = builders.Placement(labels, tuple(tolerations))
        if unknown and not (observed.aggregator or observed.tier_jobs):
            message = (
                f"admitted by ClusterQueue {workload.cluster_queue}, but ResourceFlavor(s) "
                f"{', '.join(sorted(set(unknown)))} cannot be read; the pods are created once "
                "they can"
            )
            return Admission(False, Verdict(C.ADMITTED, F, R.QUEUED, message), patches=patches)
        # (A flavor that cannot be read later, while the job runs, stops nothing: Kueue
        # keeps flavors in use; the pods were placed when they were created.)
        where = ", ".join(
            f"{'the aggregator' if k == AGGREGATOR_POD_SET else 'tier ' + k} -> {'+'.join(v) or '-'}"
            for k, v in sorted(workload.flavors.items())
        )
        message = f"admitted by ClusterQueue {workload.cluster_queue}: {where}"
        return Admission(True, Verdict(C.ADMITTED, T, R.ADMITTED, message), placements, patches=patches)
    if workload.admitted:
        # Evicted (preempted, its queue stopped) or deactivated (spec.suspend): stop the
        # pods, then give the quota back so that Kueue may admit it again later.
        why = workload.evicted or "the job was suspended"
        agg = observed.aggregator
        stopped = all(
            s.finished or (s.suspended and s.active == 0) for s in observed.tier_jobs.values()
        ) and (agg is None or (agg.replicas == 0 and agg.available == 0))
        if stopped:
            message = f"the job's pods stopped after: {why}"
            patches.append(
                _workload_status_patch(
                    workload,
                    ns,
                    [
                        _kueue_condition("QuotaReserved", "False", "Pending", message, now),
                        _kueue_condition("Admitted", "False", "NoReservation", message, now),
                    ],
                    admission=None,
                )
            )
        message = (
            f"Kueue took the job's quota back ({why}); its pods are stopped and it waits in "
            f"LocalQueue {queue} to be admitted again"
        )
        return Admission(False, Verdict(C.ADMITTED, F, R.EVICTED, message), patches=patches)
    message = f"waiting in LocalQueue {queue} for Kueue to admit every tier and the aggregator at once"
    reason = R.QUEUED
    if workload.evicted:
        message = f"Kueue evicted the job ({workload.evicted}); {message}"
        reason = R.EVICTED
    if workload.waiting:
        message += f": {workload.waiting}"
    return Admission(False, Verdict(C.ADMITTED, F, reason, message), patches=patches)


def finish_workload(job: FlexTrainJob, observed: Observed, phase: JobPhase, now: datetime) -> list[ObjectPatch]:
    """Mark the Workload of a finished job Finished, so that Kueue releases its quota."""
    workload = observed.workload
    if workload is None or workload.finished or workload.controller_uid != job_uid(job):
        return []
    reason = "Succeeded" if phase == JobPhase.SUCCEEDED else "Failed"
    message = f"FlexTrainJob {job.metadata.name} {reason.lower()}"
    condition = _kueue_condition("Finished", "True", reason, message, now)
    return [_workload_status_patch(workload, job.metadata.namespace or "default", [condition])]


@dataclass(frozen=True)
class Children:
    """What to create and patch, and what the job does not own."""

    create: list[JSON]
    patches: list[ObjectPatch]
    #: `Kind name` of children with the right name that this job does not control.
    conflicts: list[str]
    #: The job owns its Secret (the aggregator and the trainers may read it).
    secret_ours: bool
    #: The aggregator's desired replicas.
    replicas: int


def desired_children(
    job: FlexTrainJob,
    clean: FlexTrainJob,
    plan: JobPlan,
    observed: Observed,
    device_tiers: Mapping[str, DeviceTier],
    settings: OperatorSettings,
    token: str,
    admission: Admission = NOT_QUEUED,
    certificates: Certificates | None = None,
) -> Children:
    """Create what is missing, patch the fields the job owns, leave the rest alone. The
    aggregator and the trainers read the token from the Secret: they are created (and
    kept running) only while this job owns it. A job Kueue holds (`admission`) gets its
    Workload and the children that run no pod; its aggregator and tier Jobs are created
    once Kueue admits it, where Kueue placed them, and stopped when Kueue evicts it. TLS
    follows the running aggregator (its annotation) once there is one, else the job's
    `spec.aggregator.tls`; a new Secret of a TLS job carries `certificates`."""
    uid = job_uid(job)
    ns = job.metadata.namespace or "default"
    owner = names.owner_reference(KIND, job.metadata.name, uid)
    create: list[JSON] = []
    patches: list[ObjectPatch] = []
    conflicts: list[str] = []

    def owned(state: Any, what: str) -> bool:
        if state.controller_uid == uid:
            return True
        conflicts.append(f"{what} {state.name}")
        return False

    suspend = bool(job.spec.suspend) or admission.held
    secret_ours = observed.secret is not None and observed.secret.controller_uid == uid
    create += admission.create
    patches += admission.patches
    tls = observed.aggregator.tls if observed.aggregator is not None else builders.tls_enabled(job)
    own_certificates = tls and not settings.cert_manager
    if observed.secret is None:
        create.append(builders.build_secret(clean, token, owner, certificates if own_certificates else None))
    else:
        owned(observed.secret, "Secret")
    # The children that read no token: (wanted, what exists, how to build it).
    simple: tuple[tuple[str, bool, Any, Callable[[], JSON]], ...] = (
        ("Service", True, observed.service, lambda: builders.build_aggregator_service(clean, owner, settings)),
        ("NetworkPolicy", settings.network_policy, observed.network_policy,
         lambda: builders.build_network_policy(clean, owner, settings)),
        ("PersistentVolumeClaim", builders.operator_claim(clean), observed.checkpoint_claim,
         lambda: builders.build_checkpoint_claim(clean, owner, settings)),
        ("PodDisruptionBudget", settings.disruption_budget, observed.disruption_budget,
         lambda: builders.build_disruption_budget(clean, owner)),
        ("Certificate", tls and settings.cert_manager, observed.certificate,
         lambda: builders.build_certificate(clean, owner, settings)),
    )
    for kind, wanted, state, build in simple:
        if not wanted:
            continue
        if state is None:
            create.append(build())
        else:
            owned(state, kind)
    replicas = 0 if admission.held else builders.aggregator_replicas(job)
    if not secret_ours:
        # Nothing that reads a Secret the job does not own; what runs already is stopped.
        if observed.aggregator is not None:
            owned(observed.aggregator, "Deployment")
        for existing in observed.tier_jobs.values():
            owned(existing, "Job")
        if observed.secret is not None:
            patches += stop_patches(job, observed, uid)
        return Children(create, patches, conflicts, secret_ours, replicas)
    agg = observed.aggregator
    if agg is None:
        if not admission.held:
            placement = admission.placements.get(AGGREGATOR_POD_SET)
            create.append(
                builders.build_aggregator_deployment(
                    plan, owner, settings, replicas=replicas, placement=placement, tls=tls
                )
            )
    elif owned(agg, "Deployment") and agg.replicas != replicas:
        body = {"spec": {"replicas": replicas}}
        patches.append(ObjectPatch("apps/v1", "Deployment", agg.name, ns, body))
    for tier in plan.tiers:
        state = observed.tier_jobs.get(tier.name)
        if state is None:
            if tier.device_tier in device_tiers and not admission.held:
                device_tier = device_tiers[tier.device_tier]
                placement = admission.placements.get(tier.name)
                create.append(
                    builders.build_tier_job(
                        plan, tier, device_tier, owner, settings, suspend=suspend, placement=placement, tls=tls
                    )
                )
        elif owned(state, "Job") and not state.finished and state.suspended != suspend:
            body = {"spec": {"suspend": suspend}}
            patches.append(ObjectPatch("batch/v1", "Job", state.name, ns, body))
    return Children(create, patches, conflicts, secret_ours, replicas)


@dataclass(frozen=True)
class Progress:
    """Rounds, accuracy and per-tier counts as observed, and when the job started."""

    tiers: list[TierStatus]
    round: int | None
    accuracy: list[DepthAccuracy] | None
    best_accuracy: float | None
    start_time: datetime | None

    @property
    def tiers_ready(self) -> str:
        ready = sum(1 for t in self.tiers if t.replicas and t.ready >= t.replicas)
        return f"{ready}/{len(self.tiers)}"

    @property
    def all_training(self) -> bool:
        """Every tier has a ready trainer, or a round has completed."""
        return all(t.ready >= 1 for t in self.tiers) or bool(self.round)


def job_progress(
    job: FlexTrainJob,
    plan: JobPlan,
    observed: Observed,
    reading: AggregatorReading,
    prev: FlexTrainJobStatus,
    now: datetime,
    *,
    held: bool = False,
) -> Progress:
    """The deadline counts from the start, reset on resume (as for Jobs); a job Kueue
    holds has not started (its deadline restarts when Kueue admits it again)."""
    rows = [(t.name, t.replicas, t.depth, t.depth_source) for t in plan.tiers]
    round_, accuracy, best = prev.round, prev.accuracy, prev.best_accuracy
    if reading.status is not None:
        round_ = reading.status.round
        acc, best_now = _accuracy(reading.status)
        if acc:
            accuracy, best = acc, best_now
    start_time = prev.start_time
    suspend = bool(job.spec.suspend)
    resumed = prev.phase == JobPhase.SUSPENDED and not suspend
    if held:
        start_time = None
    elif not suspend and (start_time is None or resumed):
        start_time = now
    tiers = _tier_counts(rows, observed, reading, prev)
    return Progress(tiers, round_, accuracy, best, start_time)


def aggregator_condition(
    observed: Observed,
    reading: AggregatorReading,
    job: FlexTrainJob,
    replicas: int,
    was_ready: bool,
    endpoint: str,
    now: datetime,
    claim_pending_after: float,
    *,
    held: bool = False,
) -> tuple[bool, Verdict]:
    """(the aggregator is available, condition AggregatorReady)."""
    service = names.aggregator_name(job.metadata.name)
    agg = observed.aggregator
    if bool(agg and agg.available >= 1) or reading.status is not None:
        return True, Verdict(
            C.AGGREGATOR_READY, T, R.AGGREGATOR_READY, f"the aggregator answers on {endpoint}"
        )
    if job.spec.suspend and replicas == 0:
        message = "the aggregator is scaled to 0 while suspended; it resumes from its checkpoint"
        return False, Verdict(C.AGGREGATOR_READY, F, R.AGGREGATOR_STOPPED, message)
    if held:
        message = "the aggregator starts when Kueue admits the job (condition Admitted)"
        return False, Verdict(C.AGGREGATOR_READY, F, R.AGGREGATOR_STOPPED, message)
    if was_ready:
        why = (agg.failure if agg else None) or reading.error or "no available replica"
        message = f"the aggregator {service} is not available: {why}"
        return False, Verdict(C.AGGREGATOR_READY, F, R.AGGREGATOR_UNAVAILABLE, message)
    claim = observed.checkpoint_claim
    waited = now - claim.created if claim and claim.created else None
    if claim and claim.phase == "Pending" and waited and waited >= timedelta(seconds=claim_pending_after):
        # Said once it lasts (a provisioner takes seconds); the message does not move.
        assert claim.created is not None
        where = (
            f"StorageClass {claim.storage_class}: is its provisioner running? With "
            "volumeBindingMode WaitForFirstConsumer it waits for the aggregator pod to be scheduled"
            if claim.storage_class
            else "it names no StorageClass and the cluster has no default one: set the chart's "
            "checkpoints.storageClassName, give the cluster a default StorageClass, or keep "
            "checkpoints on the node with spec.checkpoint.emptyDir"
        )
        message = (
            f"the aggregator waits for its checkpoint claim {claim.name}: no volume bound to it "
            f"since {claim.created.strftime('%Y-%m-%dT%H:%M:%SZ')} ({where})"
        )
        return False, Verdict(C.AGGREGATOR_READY, F, R.CHECKPOINT_CLAIM_PENDING, message)
    message = f"waiting for Deployment {service} to have an available replica" + (
        f" ({agg.failure})" if agg and agg.failure else ""
    )
    return False, Verdict(C.AGGREGATOR_READY, F, R.AGGREGATOR_STARTING, message)


@dataclass(frozen=True)
class Health:
    """Devices that can still train against the quorum, and whether training is done."""

    total: int
    need: int
    #: tier -> (replicas lost for good, why).
    lost: dict[str, tuple[int, str]]
    #: tier -> the scheduler's messages of its unschedulable pods.
    unschedulable: dict[str, list[str]]
    done: bool

    @property
    def can_train(self) -> int:
        return self.total - sum(n for n, _ in self.lost.values())

    def lost_message(self) -> str:
        return "; ".join(f"tier {k}: {why}" for k, (_, why) in sorted(self.lost.items()))


def assess_health(
    job: FlexTrainJob, plan: JobPlan, observed: Observed, reading: AggregatorReading
) -> Health:
    """Replicas that failed for good (a failed tier Job, failed indexes) are lost;
    unschedulable ones may still come (nodes can appear)."""
    total = sum(t.replicas for t in plan.tiers)
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
    tier_names = {t.name for t in plan.tiers}
    unschedulable: dict[str, list[str]] = {}
    for pod in observed.pods:
        if pod.unschedulable and pod.tier in tier_names:
            unschedulable.setdefault(pod.tier, []).append(pod.message)
    done = bool(reading.status and reading.status.done) or (
        bool(plan.tiers)
        and all(
            (s := observed.tier_jobs.get(t.name)) is not None and s.complete for t in plan.tiers
        )
    )
    need = quorum_count(job.spec.aggregation.quorum, total)
    return Health(total, need, lost, unschedulable, done)


def deadline(
    job: FlexTrainJob, start_time: datetime | None, now: datetime, *, done: bool
) -> tuple[float | None, bool]:
    """(seconds left to activeDeadlineSeconds, or None; whether it passed). The deadline
    does not run while suspended and restarts on resume."""
    limit = job.spec.active_deadline_seconds
    if not limit or not start_time or job.spec.suspend or done:
        return None, False
    left = limit - seconds_between(now, start_time)
    return (None, True) if left <= 0 else (left, False)


def job_failure(job: FlexTrainJob, health: Health, deadline_passed: bool) -> tuple[str, str] | None:
    """(reason, message) when the job fails now: DeadlineExceeded or QuorumLost."""
    if deadline_passed:
        limit = job.spec.active_deadline_seconds
        return R.DEADLINE_EXCEEDED, f"the job ran longer than activeDeadlineSeconds={limit}"
    if health.lost and health.can_train < health.need and not health.done:
        quorum = job.spec.aggregation.quorum
        return R.QUORUM_LOST, (
            f"{health.lost_message()}; {health.can_train} of {health.total} devices can "
            f"still train, the quorum ({quorum:g}) needs {health.need}"
        )
    return None


def degraded_condition(health: Health, aggregator_lost: bool, started: bool) -> Verdict | None:
    """Degraded names the tiers while the quorum can still be met."""
    if health.lost:
        message = (
            f"{health.lost_message()}; training continues on quorum: {health.can_train} of "
            f"{health.total} devices, quorum needs {health.need}"
        )
        if health.unschedulable:
            message += "; " + _unschedulable_message(health.unschedulable)
        return Verdict(C.DEGRADED, T, R.TIER_JOB_FAILED, message)
    if health.unschedulable:
        message = _unschedulable_message(health.unschedulable)
        return Verdict(C.DEGRADED, T, R.PODS_UNSCHEDULABLE, message)
    if aggregator_lost:
        message = "the aggregator went away; trainers retry until it is back"
        return Verdict(C.DEGRADED, T, R.AGGREGATOR_UNAVAILABLE, message)
    if started:
        message = "no tier has failed or unschedulable pods"
        return Verdict(C.DEGRADED, F, R.ALL_TIERS_HEALTHY, message)
    return None


def suspension_condition(
    job: FlexTrainJob, replicas: int, suspended_before: str | None, round_: int | None
) -> Verdict | None:
    """Suspended while spec.suspend; Resumed once it is lifted."""
    if job.spec.suspend:
        keeps = (
            "the aggregator is scaled to 0 and resumes from its checkpoint claim"
            if replicas == 0
            else "the aggregator keeps running to hold the model (no checkpoint claim)"
        )
        message = f"spec.suspend is true: every tier Job is suspended; {keeps}"
        return Verdict(C.SUSPENDED, T, R.SUSPENDED, message)
    if suspended_before is not None:
        message = f"resumed: trainers continue from the aggregator's model (round {round_ or 0})"
        return Verdict(C.SUSPENDED, F, R.RESUMED, message)
    return None


def job_phase(
    failure: tuple[str, str] | None,
    done: bool,
    job: FlexTrainJob,
    degraded: bool,
    aggregator_available: bool,
    progress: Progress,
    *,
    held: bool = False,
) -> JobPhase:
    if failure:
        return JobPhase.FAILED
    if done:
        return JobPhase.SUCCEEDED
    if job.spec.suspend:
        return JobPhase.SUSPENDED
    if held:
        return JobPhase.PENDING
    if degraded:
        return JobPhase.DEGRADED
    if aggregator_available and progress.all_training:
        return JobPhase.RUNNING
    return JobPhase.PENDING


def progressing_conditions(
    phase: JobPhase,
    job: FlexTrainJob,
    progress: Progress,
    children: Children,
    observed: Observed,
    refused: Sequence[CreateFailure],
    *,
    tiers_edited: bool,
) -> list[Verdict]:
    """Progressing, in order (the last one stands): how far training is, then what stops
    it: children of someone else, refused creates, edited tiers."""
    out: list[Verdict] = []
    if phase == JobPhase.SUSPENDED:
        out.append(Verdict(C.PROGRESSING, F, R.SUSPENDED, "suspended"))
    elif progress.round:
        message = f"round {progress.round} of {job.spec.training.rounds} completed"
        out.append(Verdict(C.PROGRESSING, T, R.ROUND_COMPLETED, message))
    else:
        waiting = ", ".join(f"{t.name} {t.ready}/{t.replicas}" for t in progress.tiers)
        out.append(Verdict(C.PROGRESSING, T, R.TRAINERS_STARTING, f"trainers ready: {waiting}"))
    if children.conflicts:
        message = (
            f"{', '.join(children.conflicts)} exist(s) but belong(s) to something else; "
            "delete or rename them, the operator never takes over objects it did not create"
        )
        if observed.secret is not None and not children.secret_ours:
            message += (
                f"; no aggregator or trainer is created or kept running while Secret "
                f"{observed.secret.name} is not the job's (they would read its token)"
            )
        out.append(Verdict(C.PROGRESSING, F, R.CHILD_CONFLICT, message))
    if refused:
        waits = (
            "; the aggregator and the trainers are created once the Secret exists"
            if any(f.kind == "Secret" for f in refused)
            else ""
        )
        message = (
            "; ".join(f.describe() for f in refused)
            + waits
            + "; the operator retries with backoff (at once when what it would create changes)"
        )
        out.append(Verdict(C.PROGRESSING, F, refused[0].condition_reason, message))
    if tiers_edited:
        message = (
            "spec.tiers changed after the job started; the job keeps running with the "
            "tiers it started with. Tiers are immutable: delete the FlexTrainJob and "
            "create it again (or create a new one) to change them"
        )
        out.append(Verdict(C.PROGRESSING, F, R.TIERS_IMMUTABLE, message))
    return out


@dataclass(frozen=True)
class Completion:
    """How a job ends: its conditions, where the model is, when to look again."""

    conditions: list[Verdict]
    model_location: ModelLocation | None
    requeue: float | None


def completion(
    job: FlexTrainJob,
    phase: JobPhase,
    round_: int | None,
    failure: tuple[str, str] | None,
    settings: OperatorSettings,
    requeue: float | None,
) -> Completion:
    """A job that succeeded keeps its aggregator for `finish_grace` (trainers read
    "done"); a failed one stops everything. Both honour ttlSecondsAfterFinished.
    `requeue`: when the pass would look again otherwise."""
    total_rounds = job.spec.training.rounds
    location: ModelLocation | None = None
    if phase == JobPhase.SUCCEEDED:
        location = model_location(job, round_ or total_rounds)
        kept = (
            f"; the final model is at {location.checkpoint}, one sub-model per tier in {location.exports}"
            if location
            else "; the job keeps its checkpoints in an emptyDir, so the final model is not kept "
            "after the aggregator stops (unset spec.checkpoint.emptyDir)"
        )
        conditions = [
            Verdict(
                C.COMPLETE, T, R.TRAINING_COMPLETE, f"all {total_rounds} rounds completed" + kept
            ),
            Verdict(C.PROGRESSING, F, R.TRAINING_COMPLETE, "training complete"),
        ]
        requeue = settings.finish_grace
    else:
        assert failure is not None
        conditions = [
            Verdict(C.FAILED, T, failure[0], failure[1]),
            Verdict(C.PROGRESSING, F, failure[0], "training stopped"),
        ]
    if job.spec.ttl_seconds_after_finished is not None:
        ttl = float(job.spec.ttl_seconds_after_finished)
        requeue = ttl if requeue is None else min(requeue, ttl)
    return Completion(conditions, location, requeue)


def _unschedulable_message(unschedulable: Mapping[str, list[str]]) -> str:
    parts = []
    for tier, messages in sorted(unschedulable.items()):
        first = next((m for m in messages if m), "")
        parts.append(
            f"tier {tier}: {len(messages)} pod(s) cannot be scheduled"
            + (f" ({first})" if first else "")
        )
    return "; ".join(parts)


def merge_patches(first: list[ObjectPatch], second: list[ObjectPatch]) -> list[ObjectPatch]:
    """`second` wins for the same object (a stop patch replaces a suspend/replicas patch)."""
    keyed = {(p.kind, p.name): p for p in first}
    keyed.update({(p.kind, p.name): p for p in second})
    return list(keyed.values())
