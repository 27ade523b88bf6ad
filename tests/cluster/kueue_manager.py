"""Kueue on the test control plane: its CRDs, its manager as a process, its webhooks.

`tests/cluster/kueue/` is a small Go program that runs Kueue's own controllers,
scheduler and webhooks (the `sigs.k8s.io/kueue` module, the version its go.mod pins);
`scripts/build-kueue.sh` builds it into `.tools/bin/kueue`. This module:

1. applies Kueue's CRDs from the same module (`config/components/crd/bases` in Go's
   module cache) to the API server, and waits until they are Established;
2. makes a CA and a serving certificate for 127.0.0.1 and starts the manager with a
   Kueue Configuration file that serves the webhooks on loopback with that certificate
   (Kueue's own certificate management names the in-cluster Service, which the API
   server cannot reach here), no leader election, no metrics;
3. once the manager is ready (its /readyz: the webhook server listens), registers the
   Mutating/ValidatingWebhookConfigurations of Kueue's own manifests
   (`config/components/webhook/manifests.yaml`, the kueue.x-k8s.io ones) with
   `url: https://127.0.0.1:<port>/<path>` and the CA, so the API server calls them;
4. at the end removes the CRDs and the webhook configurations again, and stops the
   manager by its process id.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane
from tests.tools import REPO

SOURCE = REPO / "tests" / "cluster" / "kueue"
BINARY = REPO / ".tools" / "bin" / "kueue"
NAMESPACE = "kueue-system"
GO = "/usr/local/go/bin/go"


class KueueError(RuntimeError):
    """Kueue could not be built or started; the message says why."""


def version() -> str:
    """The Kueue version go.mod pins."""
    match = re.search(r"^\s*sigs\.k8s\.io/kueue (v[0-9.]+)\s*$", (SOURCE / "go.mod").read_text(), re.M)
    if not match:
        raise KueueError(f"no sigs.k8s.io/kueue requirement in {SOURCE / 'go.mod'}")
    return match.group(1)


def ensure_built() -> Path:
    """The manager binary, (re)built by scripts/build-kueue.sh when missing or older than
    its sources (the script also downloads the module, whose CRDs are applied)."""
    sources = [SOURCE / "main.go", SOURCE / "go.mod", SOURCE / "go.sum"]
    if BINARY.exists() and all(BINARY.stat().st_mtime >= s.stat().st_mtime for s in sources) and module_dir().exists():
        return BINARY
    done = subprocess.run(
        [str(REPO / "scripts" / "build-kueue.sh")], cwd=REPO, capture_output=True, text=True, timeout=3600, check=False
    )
    if done.returncode != 0 or not BINARY.exists():
        raise KueueError(f"scripts/build-kueue.sh failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return BINARY


def module_dir() -> Path:
    """Kueue's module in Go's module cache (CRDs and webhook manifests come from it)."""
    go = GO if Path(GO).exists() else "go"
    cache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    return Path(cache) / "sigs.k8s.io" / f"kueue@{version()}"


def _certificates(directory: Path) -> bytes:
    """A CA and a serving certificate for 127.0.0.1 (tls.crt, tls.key in `directory`);
    returns the CA's PEM, the webhook configurations' caBundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kueue-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca.public_bytes(serialization.Encoding.PEM)


def webhook_configurations(module: Path, port: int, ca: bytes) -> list[dict[str, Any]]:
    """Kueue's own webhook configurations, its kueue.x-k8s.io webhooks only (the job
    integrations' are not served: FlexTrain uses the Workload API), each calling the
    manager on loopback."""
    import base64

    bundle = base64.b64encode(ca).decode()
    out = []
    for doc in yaml.safe_load_all((module / "config" / "components" / "webhook" / "manifests.yaml").read_text()):
        if not doc:
            continue
        hooks = []
        for hook in doc.get("webhooks") or []:
            groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if groups != {"kueue.x-k8s.io"}:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
            hooks.append(hook)
        name = "kueue-" + doc["metadata"]["name"]
        out.append({"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": {"name": name}, "webhooks": hooks})
    return out


def _crd_name(path: Path) -> str:
    """`kueue.x-k8s.io_workloads.yaml` -> `workloads.kueue.x-k8s.io`."""
    group, plural = path.stem.split("_", 1)
    return f"{plural}.{group}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kubectl(plane: ControlPlane, *args: str, input: str | None = None, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(
        [str(REPO / ".tools" / "bin" / "kubectl"), "--kubeconfig", str(plane.kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise KueueError(f"kubectl {' '.join(args[:3])} failed: {done.stderr[-2000:]}")
    return done.stdout


@dataclasses.dataclass
class KueueManager:
    """A running Kueue manager: its process, log and webhook port."""

    proc: subprocess.Popen[bytes]
    plane: ControlPlane
    log: Path
    webhook_port: int
    #: Seconds from process start until its webhooks answered.
    start_seconds: float = 0.0
    #: (kind, name) of the webhook configurations registered for it.
    webhooks: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: Names of the CRDs applied for it.
    crds: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def start(cls, plane: ControlPlane, workdir: Path, *, timeout: float = 120) -> KueueManager:
        binary = ensure_built()
        module = module_dir()
        workdir.mkdir(parents=True, exist_ok=True)
        crds = sorted((module / "config" / "components" / "crd" / "bases").glob("*.yaml"))
        if not crds:
            raise KueueError(f"no CRDs under {module}/config/components/crd/bases")
        # Server-side: some of Kueue's CRDs are larger than client-side apply's annotation.
        args = ["apply", "--server-side", "--force-conflicts"]
        _kubectl(plane, *args, *(a for crd in crds for a in ("-f", str(crd))))
        _kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{_crd_name(c)}" for c in crds))
        _kubectl(plane, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))

        ca = _certificates(workdir / "certs")
        port, health = _free_port(), _free_port()
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(workdir / "certs")},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            # Kueue checks the list against the integrations linked in; the manager links
            # none but the Pod one Kueue's core imports, and sets none up (the default list
            # names batch/job and others, which it refuses). FlexTrain uses Workloads.
            "integrations": {"frameworks": ["pod"]},
        }
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        log = workdir / "kueue.log"
        began = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(binary), "--config", str(workdir / "config.yaml"), "--zap-log-level", "info"],
                env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        manager = cls(proc, plane, log, port, crds=[_crd_name(c) for c in crds])
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise KueueError(f"the Kueue manager exited {proc.returncode}:\n{manager.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                manager.stop()
                raise KueueError(f"the Kueue manager was not ready within {timeout:.0f} s:\n{manager.tail()}")
            time.sleep(0.2)
        for webhook in webhook_configurations(module, port, ca):
            _kubectl(plane, "apply", "-f", "-", input=json.dumps(webhook))
            manager.webhooks.append((webhook["kind"].lower(), webhook["metadata"]["name"]))
        manager.start_seconds = time.monotonic() - began
        return manager

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> int | None:
        """Remove Kueue's CRDs (their objects go with them, while the manager still runs
        to release its finalizers) and unregister its webhooks (a stopped manager would
        fail every write of a Kueue object), then SIGTERM by process id, SIGKILL after
        `timeout`. Returns the exit code."""
        if self.crds:
            _kubectl(self.plane, "delete", "crd", "--ignore-not-found", "--wait=false", *self.crds)
            _kubectl(self.plane, "wait", "--for=delete", "--timeout=60s", *(f"crd/{c}" for c in self.crds), check=False)
            self.crds.clear()
        for kind, name in self.webhooks:
            _kubectl(self.plane, "delete", kind, name, "--ignore-not-found")
        self.webhooks.clear()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode
