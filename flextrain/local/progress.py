"""Progress of a local run: a live panel on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from flextrain.wire.status import AggregatorStatus


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def tier_state(t: object) -> str:
    """waiting (no replica joined), training, or pushed (all pushed this round)."""
    joined = getattr(t, "joined", 0)
    pushed = getattr(t, "pushed_this_round", 0)
    replicas = getattr(t, "replicas", 0)
    if joined == 0:
        return "waiting"
    if pushed >= replicas:
        return "pushed"
    return f"training ({pushed}/{replicas} pushed)" if pushed else "training"


class Progress:
    def __init__(self, job: str, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.job = job
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self._lines = 0
        self._last_round = -1
        self._last_states: dict[str, str] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _eta(self, status: AggregatorStatus, rounds_at_start: int) -> str:
        done = status.round - rounds_at_start
        if done <= 0:
            return "estimating"
        per_round = self.elapsed() / done
        return _duration(per_round * (status.total_rounds - status.round))

    def update(self, status: AggregatorStatus, rounds_at_start: int = 0) -> None:
        if self.tty:
            self._panel(status, rounds_at_start)
        else:
            self._plain(status, rounds_at_start)

    def _accuracy(self, status: AggregatorStatus) -> str:
        if not status.accuracy:
            return "-"
        return "  ".join(f"depth {d}: {a:.3f}" for d, (a, _) in sorted(status.accuracy.items()))

    def _panel(self, status: AggregatorStatus, rounds_at_start: int) -> None:
        lines = [
            f"{self.job}: round {min(status.round + 1, status.total_rounds)}/{status.total_rounds}"
            f"  ({status.round} done)  elapsed {_duration(self.elapsed())}  ETA {self._eta(status, rounds_at_start)}",
        ]
        for t in status.tiers:
            lines.append(f"  tier {t.tier:<14} depth {t.depth:>3}  x{t.replicas:<3} {tier_state(t)}")
        lines.append(f"  accuracy  {self._accuracy(status)}")
        if self._lines:
            self.stream.write(f"\x1b[{self._lines}F")
        for line in lines:
            self.stream.write("\x1b[2K" + line + "\n")
        self.stream.flush()
        self._lines = len(lines)

    def _plain(self, status: AggregatorStatus, rounds_at_start: int) -> None:
        if status.round != self._last_round:
            self._last_round = status.round
            self._write(
                f"[{_duration(self.elapsed())}] round {status.round}/{status.total_rounds} done"
                f"  ETA {self._eta(status, rounds_at_start)}  accuracy {self._accuracy(status)}"
            )
        for t in status.tiers:
            state = tier_state(t).split(" ")[0]
            if self._last_states.get(t.tier) != state and state == "waiting":
                self._write(f"[{_duration(self.elapsed())}] tier {t.tier}: waiting for its trainers")
            self._last_states[t.tier] = state

    def message(self, text: str) -> None:
        """An event line (crash, restart) that stays above the panel."""
        if self.tty and self._lines:
            self.stream.write(f"\x1b[{self._lines}F\x1b[J")
            self._lines = 0
        self._write(text)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
