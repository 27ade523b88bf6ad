"""Conditions: set, read and bound them the way Kubernetes does (metav1.Condition).

A condition's lastTransitionTime changes only when its status changes; its reason and
message follow the latest observation. One condition per type, at most MAX_CONDITIONS.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from flextrain.api.common import Condition
from flextrain.api.conditions import MAX_CONDITIONS, ConditionStatus


def get_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    for c in conditions or ():
        if c.type == type_:
            return c
    return None


def is_true(conditions: Sequence[Condition] | None, type_: str) -> bool:
    c = get_condition(conditions, type_)
    return c is not None and c.status == ConditionStatus.TRUE.value


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """A copy of `conditions` with `type_` set; other conditions keep their order."""
    out: list[Condition] = []
    found = False
    for c in conditions or ():
        if c.type != type_:
            out.append(c)
            continue
        found = True
        out.append(
            Condition(
                type=type_,
                status=status,  # type: ignore[arg-type]
                reason=reason,
                message=message[:32768],
                last_transition_time=c.last_transition_time if c.status == status else now,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,  # type: ignore[arg-type]
                reason=reason,
                message=message[:32768],
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    if len(out) > MAX_CONDITIONS:  # keep the newest transitions
        out.sort(key=lambda c: c.last_transition_time or now)
        out = out[-MAX_CONDITIONS:]
    return out


def remove_condition(conditions: Sequence[Condition] | None, type_: str) -> list[Condition]:
    return [c for c in conditions or () if c.type != type_]


def changed(before: Condition | None, after: Condition | None) -> bool:
    """True when a condition's status, reason or message differs (what deserves an Event)."""
    if before is None or after is None:
        return before is not after
    return (before.status, before.reason, before.message) != (
        after.status,
        after.reason,
        after.message,
    )
