"""Processes of one benchmark run: started on loopback, watched for peak memory, and
always stopped by pid.

Every process the benchmark starts carries the environment variable `BENCH_TAG=<run id>`;
children inherit it, including the ones Flower starts detached (SuperExec, ServerApp and
ClientApp processes). The tracker finds them all by that tag in /proc, samples their peak
resident memory (VmHWM) while they live, and at the end signals each one by its pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAG_VAR = "BENCH_TAG"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a live process, in bytes ({} when it is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for servers that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader polling for the file sees all or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Peak:
    pid: int
    name: str
    hwm: int = 0
    rss_first: int = 0
    #: CPU seconds (user + system) at the last sample, and when tracking (re)started.
    cpu: float = 0.0
    cpu_base: float = 0.0
    #: time.time() when the tracker first saw the process.
    first_seen: float = field(default_factory=time.time)


@dataclass
class Tracker:
    """Starts tagged processes and keeps the peak memory of every tagged process."""

    logs: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    interval: float = 0.2
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    peaks: dict[int, Peak] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._watch, name="peak-memory", daemon=True)
        self._thread.start()

    # -- starting --------------------------------------------------------------------

    def env(
        self, extra: Mapping[str, str] | None = None, *, path_first: str | None = None
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXTRAIN_")}
        env.update({TAG_VAR: self.tag, "PYTHONUNBUFFERED": "1"})
        if path_first:
            env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra or {})
        return env

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env or self.env()),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self.started.append(popen)
        with self._lock:
            self.peaks[popen.pid] = Peak(popen.pid, name)
        return popen

    # -- watching --------------------------------------------------------------------

    def tagged_pids(self) -> list[int]:
        """Live processes carrying this run's tag (ours and everything they started)."""
        marker = f"{TAG_VAR}={self.tag}".encode()
        found = []
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry))
        return found

    def _name_of(self, pid: int) -> str:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return f"pid{pid}"
        words = [a.decode(errors="replace") for a in argv if a]
        for word in words:  # first word that names a program we care about
            base = os.path.basename(word)
            if base.startswith(("flower-", "flwr")):
                return base
        return " ".join(os.path.basename(w) for w in words[:4])

    def sample(self) -> None:
        for pid in self.tagged_pids():
            status = proc_status(pid)
            if not status:
                continue
            with self._lock:
                peak = self.peaks.get(pid)
                if peak is None:
                    peak = self.peaks[pid] = Peak(
                        pid, self._name_of(pid), rss_first=status.get("VmRSS", 0)
                    )
                if not peak.rss_first:
                    peak.rss_first = status.get("VmRSS", 0)
                peak.hwm = max(peak.hwm, status.get("VmHWM", 0))
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    peak.cpu = max(peak.cpu, cpu)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def peak_of(self, pid: int) -> int:
        """VmHWM of `pid` now if alive, else the last sampled value."""
        status = proc_status(pid)
        with self._lock:
            peak = self.peaks.get(pid)
            best = peak.hwm if peak else 0
        return max(best, status.get("VmHWM", 0))

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds per process name since forget_peaks(), summed over processes."""
        out: dict[str, float] = {}
        with self._lock:
            for p in self.peaks.values():
                name = re.sub(r"-\d+$", "", p.name)
                out[name] = out.get(name, 0.0) + p.cpu - p.cpu_base
        return out

    def peaks_named(self, prefix: str) -> list[Peak]:
        with self._lock:
            return [p for p in self.peaks.values() if p.name.startswith(prefix)]

    def reset_peak(self, pid: int) -> None:
        """Reset the kernel's VmHWM of `pid` to its current RSS (clear_refs 5)."""
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            return
        with self._lock:
            if pid in self.peaks:
                self.peaks[pid].hwm = 0

    def forget_peaks(self) -> None:
        """Start peak tracking afresh: drop dead processes, reset the kernel's VmHWM of
        live ones (clear_refs 5) so a process serving several runs reports each peak."""
        with self._lock:
            self.peaks = {pid: p for pid, p in self.peaks.items() if proc_status(pid)}
            for p in self.peaks.values():
                p.hwm = 0
                p.cpu_base = p.cpu = cpu_seconds(p.pid) or p.cpu
                with contextlib.suppress(OSError):
                    Path(f"/proc/{p.pid}/clear_refs").write_text("5")

    # -- stopping --------------------------------------------------------------------

    def stop_pids(self, pids: Sequence[int], grace: float = 5.0) -> None:
        """SIGTERM each pid, wait up to `grace` seconds, SIGKILL what is left."""
        pids = [p for p in pids if p != os.getpid()]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            self._reap()
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        for popen in self.started:
            popen.poll()  # collects exited children so they stop counting as alive

    def stop_all(self) -> None:
        """Stop every tagged process still alive (by pid), e.g. between sections."""
        for _attempt in range(3):  # children may start grandchildren while we stop them
            pids = sorted(
                set(self.tagged_pids()) | {p.pid for p in self.started if p.poll() is None}
            )
            if not pids:
                break
            self.stop_pids(pids)

    def close(self) -> None:
        """Stop every tagged process (by pid) and the watcher. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.stop_all()
        for popen in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL was sent
                popen.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
