"""The aggregator's refusal: raised by the plain-Python round logic with a `Reason`
(flextrain.contract.refusals), which carries its gRPC status; the servicer answers
with that status (and nothing else maps refusals)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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


class RefusalLog:
    """Logs refusals, at most `burst` lines per reason in any `window` seconds: a client
    that repeats a bad request (or garbage) cannot flood the log. The first line after a
    quiet spell says how many refusals of that reason went unlogged meanwhile (every one
    is still counted by the metrics and GetStatus)."""

    def __init__(
        self, logger: logging.Logger, *, burst: int = 5, window: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        #: reason -> (start of its window, lines logged in it, refusals left out)
        self._seen: dict[Reason, tuple[float, int, int]] = {}

    def __call__(self, exc: Rejected) -> bool:
        """Log `exc` unless its reason is over the limit; True when it was logged."""
        now = self._clock()
        start, logged, left_out = self._seen.get(exc.reason, (now, 0, 0))
        if now - start >= self._window:
            start, logged = now, 0
        if logged >= self._burst:
            self._seen[exc.reason] = (start, logged, left_out + 1)
            return False
        self._seen[exc.reason] = (start, logged + 1, 0)
        more = f" ({left_out} more refused for this reason and not logged)" if left_out else ""
        self._log.warning("rejected (%s): %s%s", exc.reason.value, exc, more)
        return True
