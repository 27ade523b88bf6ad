"""What the operator keeps of a FlexTrainJob's children: small summaries made from the
objects the API returns (plain dicts), so the in-memory caches stay small and
reconcile() reads typed fields instead of digging through dicts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flextrain.operator import names


def controller_uid(body: Mapping[str, Any]) -> str | None:
    """uid of the object's controlling owner, if any."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _condition(body: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def count_indexes(ranges: str | None) -> int:
    """Number of indexes in a Job's `status.failedIndexes` ("1,3-5" -> 4)."""
    total = 0
    for part in (ranges or "").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            total += (int(high) - int(low) + 1) if high else 1
        except ValueError:
            continue
    return total


@dataclass(frozen=True)
class TierJobState:
    """A tier's batch/v1 Job as last observed."""

    name: str
    tier: str
    controller_uid: str | None
    suspended: bool
    completions: int
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_indexes: int = 0
    complete: bool = False
    failed_reason: str | None = None
    failed_message: str = ""

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_reason is not None


def tier_job_state(body: Mapping[str, Any]) -> TierJobState:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    failed = _condition(body, "Failed")
    return TierJobState(
        name=str(meta.get("name", "")),
        tier=str((meta.get("labels") or {}).get(names.TIER_LABEL, "")),
        controller_uid=controller_uid(body),
        suspended=bool(spec.get("suspend")),
        completions=int(spec.get("completions") or 0),
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        failed_indexes=count_indexes(status.get("failedIndexes")),
        complete=_condition(body, "Complete") is not None,
        failed_reason=str(failed.get("reason") or "Failed") if failed else None,
        failed_message=str(failed.get("message") or "") if failed else "",
    )


@dataclass(frozen=True)
class AggregatorState:
    """The aggregator Deployment as last observed."""

    name: str
    controller_uid: str | None
    replicas: int
    available: int
    depths: Mapping[str, int] | None = None
    #: `spec.tiers` (wire form) the aggregator was started with.
    tiers: Sequence[Mapping[str, Any]] | None = None
    failure: str | None = None
    #: It serves TLS (its annotation says Enabled; a Deployment without it, from before
    #: TLS existed, serves plaintext).
    tls: bool = False


def aggregator_state(body: Mapping[str, Any]) -> AggregatorState:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    annotations = meta.get("annotations") or {}
    depths: dict[str, int] | None = None
    try:
        raw = json.loads(annotations.get(names.DEPTHS_ANNOTATION, "null"))
        if isinstance(raw, dict):
            depths = {str(k): int(v) for k, v in raw.items()}
    except (ValueError, TypeError):
        depths = None
    tiers: list[dict[str, Any]] | None = None
    try:
        raw_tiers = json.loads(annotations.get(names.TIERS_ANNOTATION, "null"))
        if isinstance(raw_tiers, list):
            tiers = [dict(t) for t in raw_tiers if isinstance(t, dict)]
    except (ValueError, TypeError):
        tiers = None
    failure = None
    for c in status.get("conditions") or []:
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            failure = str(c.get("message") or c.get("reason"))
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            failure = str(c.get("message") or c.get("reason"))
    replicas = spec.get("replicas")
    return AggregatorState(
        name=str(meta.get("name", "")),
        controller_uid=controller_uid(body),
        replicas=1 if replicas is None else int(replicas),
        available=int(status.get("availableReplicas") or 0),
        depths=depths,
        tiers=tiers,
        failure=failure,
        tls=annotations.get(names.TLS_ANNOTATION) == "Enabled",
    )


@dataclass(frozen=True)
class PodState:
    """A trainer pod as last observed (only what status reporting needs)."""

    name: str
    tier: str
    phase: str
    unschedulable: bool = False
    message: str = ""


def pod_state(body: Mapping[str, Any]) -> PodState:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    unschedulable, message = False, ""
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            unschedulable = c.get("reason") == "Unschedulable"
            message = str(c.get("message") or "")
    return PodState(
        name=str(meta.get("name", "")),
        tier=str((meta.get("labels") or {}).get(names.TIER_LABEL, "")),
        phase=str(status.get("phase") or "Pending"),
        unschedulable=unschedulable and status.get("phase", "Pending") == "Pending",
        message=message,
    )


@dataclass(frozen=True)
class ChildState:
    """Any other child (Service, Secret): it exists, and who controls it."""

    name: str
    controller_uid: str | None


def child_state(body: Mapping[str, Any]) -> ChildState:
    return ChildState(
        name=str((body.get("metadata") or {}).get("name", "")), controller_uid=controller_uid(body)
    )


@dataclass(frozen=True)
class ClaimState(ChildState):
    """The checkpoint claim: also whether a volume is bound to it, and since when not."""

    phase: str = ""
    storage_class: str | None = None
    created: datetime | None = None


def claim_state(body: Mapping[str, Any]) -> ClaimState:
    meta = body.get("metadata") or {}
    created = None
    if isinstance(stamp := meta.get("creationTimestamp"), str):
        try:
            created = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            created = None
    return ClaimState(
        name=str(meta.get("name", "")),
        controller_uid=controller_uid(body),
        phase=str((body.get("status") or {}).get("phase") or "Pending"),
        storage_class=(body.get("spec") or {}).get("storageClassName") or None,
        created=created,
    )


@dataclass(frozen=True)
class WorkloadState:
    """The job's Kueue Workload as last observed (jobs with `spec.queueName` only)."""

    name: str
    controller_uid: str | None
    resource_version: str = ""
    #: status.admission is set and condition Admitted is True.
    admitted: bool = False
    #: Condition Finished is True (the operator set it; Kueue released the quota).
    finished: bool = False
    #: Condition Evicted is True: `reason: message` (Kueue preempted or stopped it).
    evicted: str | None = None
    #: status.admission.clusterQueue.
    cluster_queue: str = ""
    #: Pod set -> the ResourceFlavors Kueue assigned to it (sorted, distinct).
    flavors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Why it waits: condition QuotaReserved=False's message (Kueue's own words).
    waiting: str = ""
    #: status.conditions as stored (the operator adds Finished to them, never drops one).
    conditions: tuple[Mapping[str, Any], ...] = ()
    #: spec.active (false: Kueue does not admit it, and evicts it if it was).
    active: bool = True


def workload_state(body: Mapping[str, Any]) -> WorkloadState:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    admission = status.get("admission") or {}
    conditions = tuple(
        dict(c) for c in status.get("conditions") or [] if isinstance(c, Mapping)
    )
    flavors: dict[str, tuple[str, ...]] = {}
    for assignment in admission.get("podSetAssignments") or []:
        names_ = sorted({str(f) for f in (assignment.get("flavors") or {}).values()})
        flavors[str(assignment.get("name", ""))] = tuple(names_)
    evicted = _condition(body, "Evicted")
    waiting = ""
    for c in conditions:
        if c.get("type") == "QuotaReserved" and c.get("status") == "False":
            waiting = str(c.get("message") or c.get("reason") or "")
    return WorkloadState(
        name=str(meta.get("name", "")),
        controller_uid=controller_uid(body),
        resource_version=str(meta.get("resourceVersion", "")),
        admitted=bool(admission) and _condition(body, "Admitted") is not None,
        finished=_condition(body, "Finished") is not None,
        evicted=(
            f"{evicted.get('reason') or 'Evicted'}: {evicted.get('message') or ''}".rstrip(": ")
            if evicted
            else None
        ),
        cluster_queue=str(admission.get("clusterQueue") or ""),
        flavors=flavors,
        waiting=waiting,
        conditions=conditions,
        active=(body.get("spec") or {}).get("active") is not False,
    )


@dataclass(frozen=True)
class FlavorState:
    """A Kueue ResourceFlavor: the node labels and tolerations it gives the pods it admits."""

    name: str
    node_labels: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


def flavor_state(body: Mapping[str, Any]) -> FlavorState:
    spec = body.get("spec") or {}
    labels = spec.get("nodeLabels") or {}
    tolerations = spec.get("tolerations") or []
    return FlavorState(
        name=str((body.get("metadata") or {}).get("name", "")),
        node_labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
        tolerations=tuple(dict(t) for t in tolerations if isinstance(t, Mapping)),
    )


@dataclass(frozen=True)
class Observed:
    """Everything observed about one FlexTrainJob's children."""

    secret: ChildState | None = None
    service: ChildState | None = None
    network_policy: ChildState | None = None
    disruption_budget: ChildState | None = None
    checkpoint_claim: ClaimState | None = None
    #: The cert-manager Certificate (operators set up with an issuer only; known from
    #: this operator's own create, not watched).
    certificate: ChildState | None = None
    aggregator: AggregatorState | None = None
    tier_jobs: Mapping[str, TierJobState] = field(default_factory=dict)
    pods: Sequence[PodState] = ()
    workload: WorkloadState | None = None

    @property
    def any_child(self) -> bool:
        return bool(self.aggregator or self.service or self.tier_jobs)
