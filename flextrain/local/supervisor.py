"""Child processes of `flextrain run`, supervised the way Kubernetes would: a trainer
that crashes is restarted with exponential backoff up to a limit (like a Job's
backoffLimit), a crashed aggregator is restarted (like a Deployment) and resumes from
its checkpoint, and everything is stopped cleanly (SIGTERM, then SIGKILL) at the end."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flextrain.contract.env import EXIT_PERMANENT

log = logging.getLogger("flextrain.run")

#: Exit code of trainers and the aggregator for permanent errors (bad config, auth).


@dataclass
class Child:
    """One supervised process and its restart policy."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    max_restarts: int
    #: Where the current pid is written (tests and operators find processes by it).
    pid_file: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    finished: bool = False
    exit_code: int | None = None
    history: list[int] = field(default_factory=list)

    def start(self, cwd: Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as handle:
            handle.write(f"\n===== start {self.restarts} of {self.name} =====\n".encode())
            handle.flush()
            self.popen = subprocess.Popen(
                self.argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
            )
        self.exit_code = None
        if self.pid_file:
            self.pid_file.write_text(str(self.popen.pid))

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def last_lines(self, n: int = 5) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def signal(self, sig: int) -> None:
        if self.running and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)


class Supervisor:
    """Starts, watches, restarts and stops children."""

    def __init__(
        self, cwd: Path | None = None, base_backoff: float = 1.0, max_backoff: float = 30.0, pid_dir: Path | None = None
    ) -> None:
        self.children: dict[str, Child] = {}
        self.cwd = cwd
        self.pid_dir = pid_dir
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff

    def add(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, max_restarts: int) -> Child:
        pid_file = self.pid_dir / f"{name}.pid" if self.pid_dir else None
        child = Child(name, list(argv), dict(env), log_path, max_restarts, pid_file)
        self.children[name] = child
        child.start(self.cwd)
        return child

    def poll(self) -> list[str]:
        """Reap exited children; schedule restarts. Returns human-readable events."""
        events = []
        now = time.monotonic()
        for child in self.children.values():
            if child.finished:
                continue
            if child.popen is None:
                if now >= child.next_start:
                    child.start(self.cwd)
                    events.append(f"{child.name}: restarted (restart {child.restarts})")
                continue
            code = child.popen.poll()
            if code is None:
                continue
            child.exit_code = code
            child.history.append(code)
            if code == 0:
                child.finished = True
                continue
            if code == EXIT_PERMANENT:
                child.finished = True
                events.append(f"{child.name}: failed permanently (exit {code}): {child.last_lines(1)}")
                continue
            if child.restarts >= child.max_restarts:
                child.finished = True
                events.append(f"{child.name}: exit {code}; restart limit {child.max_restarts} reached")
                continue
            delay = min(self.max_backoff, self.base_backoff * 2**child.restarts)
            child.restarts += 1
            child.popen = None
            child.next_start = now + delay
            how = f"signal {-code}" if code < 0 else f"exit {code}"
            events.append(f"{child.name}: crashed ({how}); restarting in {delay:.0f}s")
        return events

    def stop(self, names: Sequence[str] | None = None, grace: float = 10.0) -> None:
        """SIGTERM the children, wait up to `grace` seconds, then SIGKILL what is left."""
        chosen = [self.children[n] for n in names] if names else list(self.children.values())
        for child in chosen:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in chosen:
            if child.popen is None:
                continue
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.popen.wait(timeout=10)
            child.finished = True
