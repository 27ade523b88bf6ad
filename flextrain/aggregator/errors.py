"""The aggregator's refusal: raised by the plain-Python round logic with a `Reason`
(flextrain.contract.refusals), which carries its gRPC status; the servicer answers
with that status (and nothing else maps refusals)."""

from __future__ import annotations

from flextrain.contract.refusals import Reason


class Rejected(Exception):
    """A request the aggregator refuses; `reason` is the wire reason and metric label."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
