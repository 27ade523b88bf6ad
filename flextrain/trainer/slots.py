"""Machine-wide training slots: at most N trainer processes of one machine train at
the same time (the others wait, connected, holding no CPU).

`flextrain run` starts one process per replica; with more replicas than cores, free
for all training would thrash. Each slot is a file in a directory; a trainer holds
an exclusive `flock` on one slot while it trains. The kernel releases the lock when
a process dies, so a crashed trainer never leaks its slot.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType


class TrainingSlots:
    def __init__(self, directory: Path, count: int, poll_seconds: float = 0.05) -> None:
        if count < 1:
            raise ValueError(f"slot count must be >= 1, got {count}")
        self.directory = Path(directory)
        self.count = count
        self.poll = poll_seconds
        self._fd: int | None = None
        self.directory.mkdir(parents=True, exist_ok=True)

    def acquire(self) -> int:
        """Block until a slot is free; returns its index."""
        while True:
            for index in range(self.count):
                fd = os.open(self.directory / f"slot-{index}", os.O_CREAT | os.O_RDWR, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._fd = fd
                return index
            time.sleep(self.poll)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TrainingSlots:
        self.acquire()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.release()
