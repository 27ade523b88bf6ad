"""Why the aggregator refuses a request: one `Reason` per refusal, each with the gRPC
status it is answered with and what a trainer does about it.

The aggregator raises by `Reason`; its servicer answers with `reason.status` (the
name of a ``grpc.StatusCode``) and sends the reason's value in the ``flextrain-reason``
trailing metadata (``flextrain.wire.auth.REASON_KEY``); the value is also the label of
the rejection counters (GetStatus ``updates_rejected``, metric
``flextrain_updates_rejected``). The trainer reads the value back with
`Reason.from_wire` and acts on `reason.remedy`. The table in docs/aggregator.md is
checked against this module by a test.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Status(StrEnum):
    """The gRPC status codes a refusal is answered with (values: ``grpc.StatusCode`` names)."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


class Remedy(StrEnum):
    """What a trainer does when its request is refused."""

    REJOIN = "rejoin"
    """The aggregator does not know the trainer (it restarted): join again."""
    NEXT_ROUND = "next_round"
    """The update cannot count in its round any more: train the next round."""
    GIVE_UP = "give_up"
    """Permanent: retrying cannot help (token, job, configuration, a broken update)."""
    RETRY = "retry"
    """Transient (the network stalled): back off and make the same call again."""


class Reason(StrEnum):
    """Machine-readable reason of a refusal; the value is what crosses the wire."""

    UNAUTHENTICATED = "unauthenticated"
    WRONG_IDENTITY = "wrong_identity"
    WRONG_JOB = "wrong_job"
    UNKNOWN_TIER = "unknown_tier"
    BAD_REPLICA = "bad_replica"
    DEPTH_MISMATCH = "depth_mismatch"
    UNKNOWN_CLIENT = "unknown_client"
    STALE_ROUND = "stale_round"
    JOB_DONE = "job_done"
    FUTURE_ROUND = "future_round"
    DUPLICATE = "duplicate"
    TOO_DEEP = "too_deep"
    MISSING_TENSOR = "missing_tensor"
    UNKNOWN_TENSOR = "unknown_tensor"
    DUPLICATE_TENSOR = "duplicate_tensor"
    SHAPE_MISMATCH = "shape_mismatch"
    DTYPE_MISMATCH = "dtype_mismatch"
    NON_FINITE = "non_finite"
    OUT_OF_BOUNDS = "out_of_bounds"
    NON_FINITE_MERGE = "non_finite_merge"
    BAD_EXAMPLES = "bad_examples"
    TOO_LARGE = "too_large"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    PUSH_TIMEOUT = "push_timeout"
    MERGE_REJECTED = "merge_rejected"

    @property
    def status(self) -> Status:
        """The gRPC status code the refusal is answered with."""
        return RULES[self].status

    @property
    def remedy(self) -> Remedy:
        """What the refused trainer does."""
        return RULES[self].remedy

    @property
    def permanent(self) -> bool:
        """True when retrying cannot help the trainer."""
        return RULES[self].remedy is Remedy.GIVE_UP

    @property
    def when(self) -> str:
        """When the aggregator refuses with this reason (for people: docs, logs)."""
        return RULES[self].when

    @classmethod
    def from_wire(cls, value: str) -> Reason | None:
        """The reason a refused call's trailing metadata names; None for a missing or
        unknown one (an aggregator of another release, or no aggregator at all)."""
        try:
            return cls(value)
        except ValueError:
            return None


class Rule(NamedTuple):
    status: Status
    remedy: Remedy
    when: str


_S, _R = Status, Remedy
#: Every reason's status, remedy and description, in the order docs/aggregator.md lists them.
RULES: dict[Reason, Rule] = {
    Reason.UNAUTHENTICATED: Rule(_S.UNAUTHENTICATED, _R.GIVE_UP, "missing, malformed or wrong credential"),
    Reason.WRONG_IDENTITY: Rule(
        _S.PERMISSION_DENIED,
        _R.GIVE_UP,
        "the call names another tier, replica or depth than its replica credential (or a job token is used to train)",
    ),
    Reason.WRONG_JOB: Rule(_S.NOT_FOUND, _R.GIVE_UP, "Join names another job"),
    Reason.UNKNOWN_TIER: Rule(_S.NOT_FOUND, _R.GIVE_UP, "Join names a tier the job lacks"),
    Reason.BAD_REPLICA: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "replica index outside 0..replicas-1"),
    Reason.DEPTH_MISMATCH: Rule(_S.FAILED_PRECONDITION, _R.GIVE_UP, "the trainer's depth differs from its tier's"),
    Reason.UNKNOWN_CLIENT: Rule(
        _S.FAILED_PRECONDITION, _R.REJOIN, "push or pull before Join (e.g. the aggregator restarted: re-join)"
    ),
    Reason.STALE_ROUND: Rule(
        _S.FAILED_PRECONDITION, _R.NEXT_ROUND, "the round closed before the update arrived (pull the next round)"
    ),
    Reason.JOB_DONE: Rule(_S.FAILED_PRECONDITION, _R.GIVE_UP, "training is complete"),
    Reason.FUTURE_ROUND: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "the round has not opened"),
    Reason.DUPLICATE: Rule(_S.ALREADY_EXISTS, _R.NEXT_ROUND, "second update from a client in one round"),
    Reason.TOO_DEEP: Rule(_S.PERMISSION_DENIED, _R.GIVE_UP, "a tensor beyond the client's depth"),
    Reason.MISSING_TENSOR: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "a tensor of the prefix is missing"),
    Reason.UNKNOWN_TENSOR: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "a tensor that is not part of the model"),
    Reason.DUPLICATE_TENSOR: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "a tensor sent twice"),
    Reason.SHAPE_MISMATCH: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "a tensor's shape differs"),
    Reason.DTYPE_MISMATCH: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "a tensor's wire dtype differs"),
    Reason.NON_FINITE: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "NaN or infinity in a tensor"),
    Reason.OUT_OF_BOUNDS: Rule(
        _S.INVALID_ARGUMENT,
        _R.GIVE_UP,
        "a value beyond the update bound (a multiple of the global tensor's largest magnitude), "
        "or an integer counter outside its range",
    ),
    Reason.NON_FINITE_MERGE: Rule(
        _S.INVALID_ARGUMENT,
        _R.GIVE_UP,
        "counted, not answered: an accepted update named when its round's merge was not finite "
        "(the round keeps the previous model)",
    ),
    Reason.BAD_EXAMPLES: Rule(
        _S.INVALID_ARGUMENT, _R.GIVE_UP, "example count not positive, or more than the sender's data shard holds"
    ),
    Reason.TOO_LARGE: Rule(
        _S.RESOURCE_EXHAUSTED, _R.GIVE_UP, "more bytes than the header describes, or than the update limit"
    ),
    Reason.TRUNCATED: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "fewer bytes than the header describes"),
    Reason.MALFORMED: Rule(
        _S.INVALID_ARGUMENT,
        _R.GIVE_UP,
        "bytes that do not decode as the call's message, chunks out of order, a header over its size or "
        "tensor-count bound, or one that describes no tensors this protocol carries",
    ),
    Reason.PUSH_TIMEOUT: Rule(
        _S.DEADLINE_EXCEEDED,
        _R.RETRY,
        "a push sent nothing for the idle timeout, or fell behind the minimum rate (its update is dropped)",
    ),
    Reason.MERGE_REJECTED: Rule(_S.INVALID_ARGUMENT, _R.GIVE_UP, "the merge strategy refuses the update"),
}

if set(RULES) != set(Reason):  # pragma: no cover - caught by the import in every test
    raise ImportError(f"refusal reasons without a rule: {sorted(set(Reason) - set(RULES))}")
