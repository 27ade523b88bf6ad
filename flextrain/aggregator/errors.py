"""The aggregator's refusal: raised by the plain-Python round logic with a `Reason`
(flextrain.contract.refusals), which carries its gRPC status; the servicer answers
with that status (and nothing else maps refusals)."""

from __future__ import annotations

from flextrain.contract.refusals import Reason

#: The longest refusal message: it becomes the gRPC status details and a log line, and
#: may quote what a client sent (a tier name, a tensor name), so a longer one keeps its
#: head and its tail and says how much was cut.
MAX_MESSAGE = 500
_HEAD, _TAIL = 300, 150


def bounded(message: str) -> str:
    """`message`, cut in the middle to at most about MAX_MESSAGE characters."""
    if len(message) <= MAX_MESSAGE:
        return message
    cut = len(message) - _HEAD - _TAIL
    return f"{message[:_HEAD]}...[{cut} characters cut]...{message[-_TAIL:]}"


class Rejected(Exception):
    """A request the aggregator refuses; `reason` is the wire reason and metric label.
    The message is bounded (`bounded`): client input never travels or logs in full."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(bounded(message))
        self.reason = reason
