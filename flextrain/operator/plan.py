"""What a reconcile pass decides, as data: the Plan (children to create and patch,
Events, the new status) and the vocabulary its steps speak: condition Verdicts, the
Conditions collector that turns them into the status's conditions and the Events they
deserve, the aggregator's reading and the creates the API server refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from flextrain.api.common import Condition
from flextrain.api.conditions import (
    ConditionStatus,
    JobConditionType,
    JobReason,
)
from flextrain.api.flextrainjob import (
    FlexTrainJob,
    FlexTrainJobStatus,
)
from flextrain.operator.status import changed, get_condition, set_condition
from flextrain.wire.status import AggregatorStatus

JSON = dict[str, Any]
T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
C = JobConditionType
R = JobReason


@dataclass(frozen=True)
class Verdict:
    """A condition one step decided."""

    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class ObjectPatch:
    """A JSON merge patch for one existing child."""

    api_version: str
    kind: str
    name: str
    namespace: str
    body: JSON
    #: `status` to patch the status subresource (a Kueue Workload's conditions).
    subresource: str | None = None


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


def job_extra(job: FlexTrainJob, key: str) -> Any:
    return (job.metadata.model_extra or {}).get(key)


def job_uid(job: FlexTrainJob) -> str:
    return str(job_extra(job, "uid") or "")


class Conditions:
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

    def apply(self, *verdicts: Verdict | None) -> None:
        """Set the conditions steps decided, in order (None: a step decided nothing)."""
        for verdict in verdicts:
            if verdict is not None:
                self.set(verdict.type, verdict.status, verdict.reason, verdict.message)

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
        R.POLICY_VIOLATION,
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
        or (
            type_ == C.AGGREGATOR_READY
            and after.reason in (R.AGGREGATOR_UNAVAILABLE, R.CHECKPOINT_CLAIM_PENDING)
        )
        or (type_ == C.PROGRESSING and after.reason in _PROGRESSING_PROBLEMS)
        or (type_ == C.ADMITTED and after.reason in (R.KUEUE_DISABLED, R.CHILD_CONFLICT))
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


def new_status(prev: FlexTrainJobStatus, **changes: Any) -> FlexTrainJobStatus:
    return prev.model_copy(update=changes, deep=True)
