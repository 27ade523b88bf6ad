"""The test control plane as a process: build it, start it, wait until it is ready,
stop it by its process id.

The Go program in `tests/cluster/controlplane/` runs etcd, kube-apiserver,
kube-controller-manager and kube-scheduler from Kubernetes' own modules in one process
(see its main.go). `scripts/build-controlplane.sh` builds it into `.tools/bin/`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from tests.tools import REPO

SOURCE = REPO / "tests" / "cluster" / "controlplane"
BINARY = REPO / ".tools" / "bin" / "controlplane"
READY_PREFIX = "controlplane: ready "


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says why."""


def ensure_built() -> Path:
    """The control plane binary, (re)built when missing or older than its sources."""
    sources = [SOURCE / "main.go", SOURCE / "go.mod", SOURCE / "go.sum"]
    if BINARY.exists() and all(BINARY.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return BINARY
    done = subprocess.run(
        [str(REPO / "scripts" / "build-controlplane.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0 or not BINARY.exists():
        raise ControlPlaneError(
            f"scripts/build-controlplane.sh failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return BINARY


@dataclasses.dataclass
class ControlPlane:
    """A running control plane: its process, admin kubeconfig and API server URL."""

    proc: subprocess.Popen[str]
    dir: Path
    kubeconfig: Path
    server: str
    log: Path
    #: Seconds from process start to a ready API server, controller manager and scheduler.
    start_seconds: float
    #: The API server's audit log (JSON lines), when started with one.
    audit_log: Path | None = None

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        timeout: float = 300.0,
        audit_log: Path | None = None,
        audit_policy: Path | None = None,
    ) -> ControlPlane:
        """Start one in `workdir`; with `audit_log`, the API server writes its audit log
        there (JSON lines) by `audit_policy` (default: every request at level Metadata)."""
        binary = ensure_built()
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "controlplane.log"
        began = time.monotonic()
        with log.open("w") as log_file:
            args = [str(binary), "--dir", str(workdir / "state")]
            if audit_log is not None:
                args += ["--audit-log", str(audit_log)]
                if audit_policy is not None:
                    args += ["--audit-policy", str(audit_policy)]
            proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                start_new_session=True,
            )
        ready: dict[str, str] = {}
        seen = threading.Event()

        def read_stdout() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(READY_PREFIX):
                    ready.update(kv.split("=", 1) for kv in line[len(READY_PREFIX) :].split())
                    seen.set()
            seen.set()

        threading.Thread(target=read_stdout, name="controlplane-stdout", daemon=True).start()
        if not seen.wait(timeout) or not ready:
            proc.kill()
            proc.wait(10)
            raise ControlPlaneError(
                f"control plane not ready within {timeout:.0f} s (exit {proc.returncode}); "
                f"last log lines:\n{_tail(log)}"
            )
        plane = cls(
            proc=proc,
            dir=workdir / "state",
            kubeconfig=Path(ready["kubeconfig"]),
            server=ready["server"],
            log=log,
            start_seconds=time.monotonic() - began,
            audit_log=audit_log,
        )
        plane.wait_readyz(timeout=30)
        return plane

    def admin_token(self) -> str:
        for line in (self.dir / "tokens.csv").read_text().splitlines():
            token, user, *_ = line.split(",")
            if user == "admin":
                return token
        raise ControlPlaneError("no admin token in tokens.csv")

    def wait_readyz(self, *, timeout: float) -> None:
        """Wait until the API server's /readyz answers 200."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(
            self.server + "/readyz", headers={"Authorization": f"Bearer {self.admin_token()}"}
        )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as resp:
                    if resp.status == 200:
                        return
                    last = str(resp.status)
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(f"/readyz not ok within {timeout:.0f} s: {last}")

    def stop(self, *, timeout: float = 60.0) -> int:
        """SIGTERM by process id; SIGKILL after `timeout`. Returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RawResponse(NamedTuple):
    status: int
    body: dict[str, Any]


def request(plane: ControlPlane, method: str, path: str, body: Any = None, *, query: str = "", token: str | None = None) -> RawResponse:
    """One HTTP request to the API server (admin unless `token`), never raising on a
    status: tests that check refusals read the server's own Status object."""
    import json
    import urllib.error

    context = ssl.create_default_context(cafile=str(plane.ca_file))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        plane.server + path + (f"?{query}" if query else ""),
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {token or plane.admin_token()}",
            "Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json",
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, context=context, timeout=30) as resp:
            return RawResponse(resp.status, json.loads(resp.read() or b"{}"))
    except urllib.error.HTTPError as exc:
        return RawResponse(exc.code, json.loads(exc.read() or b"{}"))
