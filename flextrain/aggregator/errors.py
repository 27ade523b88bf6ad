"""Why the aggregator refuses a request. Raised by the plain-Python round logic; the
gRPC servicer maps each kind to one status code (and nothing else does)."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    UNAUTHENTICATED = "unauthenticated"
    INVALID = "invalid"  # INVALID_ARGUMENT
    PRECONDITION = "precondition"  # FAILED_PRECONDITION
    DENIED = "denied"  # PERMISSION_DENIED
    EXISTS = "exists"  # ALREADY_EXISTS
    EXHAUSTED = "exhausted"  # RESOURCE_EXHAUSTED
    NOT_FOUND = "not_found"  # NOT_FOUND


class Rejected(Exception):
    """A request the aggregator refuses; `reason` is the metric label."""

    def __init__(self, kind: Kind, reason: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason


def invalid(reason: str, message: str) -> Rejected:
    return Rejected(Kind.INVALID, reason, message)


def precondition(reason: str, message: str) -> Rejected:
    return Rejected(Kind.PRECONDITION, reason, message)
