"""Condition types, reasons and phases of FlexTrain resources, as named constants.

Every condition the operator writes uses one of these types and reasons, so users and
tools can match on them (`kubectl wait --for=condition=Complete ftj/NAME`).
Reasons are CamelCase, machine-readable; the condition's message is for humans.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class JobPhase(StrEnum):
    """High-level state of a FlexTrainJob, shown in `kubectl get ftj`."""

    PENDING = "Pending"
    """Accepted; children are being created, tiers/nodes are not available yet, or Kueue
    has not admitted the job (condition Admitted)."""
    RUNNING = "Running"
    """The aggregator is up and every tier is training."""
    DEGRADED = "Degraded"
    """Training continues on quorum, but at least one tier cannot run (see conditions)."""
    SUSPENDED = "Suspended"
    """`spec.suspend` is true: no trainer runs; the checkpoint is kept."""
    SUCCEEDED = "Succeeded"
    """All rounds completed; the final model is at `status.modelLocation`."""
    FAILED = "Failed"
    """Training cannot continue (see the Failed condition's reason)."""


TERMINAL_PHASES: Final[frozenset[JobPhase]] = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED})


class JobConditionType(StrEnum):
    """Condition types of a FlexTrainJob."""

    TIERS_AVAILABLE = "TiersAvailable"
    """True when every referenced DeviceTier exists and matches at least one Ready node."""
    AGGREGATOR_READY = "AggregatorReady"
    """True when the aggregator answers its gRPC health check."""
    PROGRESSING = "Progressing"
    """True while rounds are completing."""
    DEGRADED = "Degraded"
    """True when a tier's Job failed or its pods cannot be scheduled, but quorum holds."""
    SUSPENDED = "Suspended"
    """True while `spec.suspend` is true."""
    COMPLETE = "Complete"
    """True when all rounds completed."""
    FAILED = "Failed"
    """True when the job failed for good."""
    ADMITTED = "Admitted"
    """Jobs with `spec.queueName` only: True while Kueue admits the job's Workload (every
    tier and the aggregator at once); False while it waits in the queue or was evicted."""


class JobReason(StrEnum):
    """Reasons used in FlexTrainJob conditions and events."""

    CREATED = "Created"
    TIER_NOT_FOUND = "DeviceTierNotFound"
    TIER_INVALID = "DeviceTierInvalid"
    NO_MATCHING_NODES = "NoMatchingNodes"
    TIERS_AVAILABLE = "TiersAvailable"
    DEPTH_CHOSEN = "DepthChosen"
    DEPTH_UNSATISFIABLE = "DepthUnsatisfiable"
    AGGREGATOR_STARTING = "AggregatorStarting"
    AGGREGATOR_READY = "AggregatorReady"
    AGGREGATOR_UNAVAILABLE = "AggregatorUnavailable"
    CHECKPOINT_CLAIM_PENDING = "CheckpointClaimPending"
    ROUND_COMPLETED = "RoundCompleted"
    TIER_JOB_FAILED = "TierJobFailed"
    PODS_UNSCHEDULABLE = "PodsUnschedulable"
    QUORUM_LOST = "QuorumLost"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    TRAINING_COMPLETE = "TrainingComplete"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SPEC_INVALID = "SpecInvalid"
    TIERS_IMMUTABLE = "TiersImmutable"
    TRAINERS_STARTING = "TrainersStarting"
    ALL_TIERS_HEALTHY = "AllTiersHealthy"
    AGGREGATOR_STOPPED = "AggregatorStopped"
    CHILD_CONFLICT = "ChildConflict"
    CHILD_INVALID = "ChildInvalid"
    CHILD_FORBIDDEN = "ChildForbidden"
    CHILD_CREATE_FAILED = "ChildCreateFailed"
    TTL_EXPIRED = "TTLExpired"
    POLICY_VIOLATION = "PolicyViolation"
    QUEUED = "Queued"
    ADMITTED = "Admitted"
    EVICTED = "Evicted"
    KUEUE_DISABLED = "KueueDisabled"


class TierConditionType(StrEnum):
    """Condition types of a DeviceTier."""

    NODES_AVAILABLE = "NodesAvailable"
    """True when the tier's nodeSelector and architecture match at least one Ready node."""


class TierReason(StrEnum):
    """Reasons used in DeviceTier conditions."""

    NODES_MATCHED = "NodesMatched"
    NO_MATCHING_NODES = "NoMatchingNodes"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


#: The most conditions a status keeps (one per type; the list is bounded in the CRD too).
MAX_CONDITIONS: Final[int] = 16
