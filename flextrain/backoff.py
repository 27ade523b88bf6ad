"""The one backoff of every process: after `attempts` failures in a row, wait
`base * 2**(attempts-1)` seconds, at most `cap`; with a random generator, a uniform
draw below that ("full jitter", so that many clients cut off together do not come
back together). The operator retries refused creates and failed passes with it (no
jitter: one writer per job); trainers retry an unreachable aggregator with jitter.

Plain Python, importable by every layer."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator


def backoff_delay(
    attempts: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after `attempts` (1, 2, ...) failures in a row."""
    ceiling = float(min(cap, base * 2 ** max(0, attempts - 1)))
    return rng.uniform(0, ceiling) if rng is not None else ceiling


def backoff_delays(
    *, base: float, cap: float, rng: random.Random | None = None
) -> Iterator[float]:
    """backoff_delay() after 1, 2, 3, ... failures."""
    return (backoff_delay(n, base=base, cap=cap, rng=rng) for n in itertools.count(1))
