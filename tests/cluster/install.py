"""The product as a cluster admin installs it: `helm install` of charts/flextrain into
the real API server, then the operator as a local process that logs in with the chart's
ServiceAccount (a token from the TokenRequest API) and runs with the environment the
chart's Deployment gives it. Any 403 the operator meets is in its log, and the tests
fail on it: the chart's RBAC is what is proven sufficient."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.cluster.controlplane import ControlPlane
from tests.tools import REPO

RELEASE = "ft"
NAMESPACE = "flextrain-system"
CHART = REPO / "charts" / "flextrain"
#: How kube-apiserver words an RBAC refusal.
RBAC_DENIAL = re.compile(r'User \\?"system:serviceaccount:[^"\\]+\\?" cannot ')


def helm(helm_binary: Path, plane: ControlPlane, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary), "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def install_chart(helm_binary: Path, plane: ControlPlane, *values: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`helm install` of the chart into NAMESPACE as an admin would, waiting for its
    Deployment; `values` are `--set` arguments. Raises with helm's output if it fails."""
    sets = [arg for value in values for arg in ("--set", value)]
    done = helm(
        helm_binary,
        plane,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        *sets,
        "--wait",
        "--timeout",
        "120s",
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"helm install failed:\n{done.stdout}\n{done.stderr}")
    return done


def service_account_client(
    api: client.ApiClient,
    plane: ControlPlane,
    account: str = f"{RELEASE}-flextrain",
    namespace: str = NAMESPACE,
) -> client.ApiClient:
    """An API client logged in as ServiceAccount `namespace/account` (TokenRequest)."""
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(account, namespace, {"spec": {"expirationSeconds": 3600}})
        .status.token
    )
    configuration = client.Configuration()
    configuration.host = plane.server
    configuration.ssl_ca_cert = str(plane.ca_file)
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


def wait_owner_kind_known(
    api: client.ApiClient,
    plane: ControlPlane,
    *,
    timeout: float = 60,
    account: str = f"{RELEASE}-flextrain",
    namespace: str = NAMESPACE,
) -> None:
    """Wait until the API server can check blockOwnerDeletion on a FlexTrainJob owner
    for the operator's ServiceAccount.

    OwnerReferencesPermissionEnforcement resolves an owner's kind through the API
    server's discovery RESTMapper, which reloads every 30 s: until it knows the new
    CRDs, children with blockOwnerDeletion are refused (403, "cannot find RESTMapping").
    The operator reports and retries that (docs/operator.md); tests and benchmarks start
    after it. The probe (a dry-run create) is sent as the operator: a user allowed to
    finalize everything (the admin, system:masters) skips the RESTMapper altogether, so
    its creates pass at once and prove nothing."""
    probe = {
        "metadata": {
            "name": "owner-probe",
            "ownerReferences": [
                {
                    "apiVersion": "flextrain.dev/v1alpha1",
                    "kind": "FlexTrainJob",
                    "name": "probe",
                    "uid": "00000000-0000-4000-8000-000000000000",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
    }
    with service_account_client(api, plane, account, namespace) as operator:
        core = client.CoreV1Api(operator)
        deadline = time.monotonic() + timeout
        while True:
            try:
                core.create_namespaced_secret(namespace, probe, dry_run="All")
                return
            except client.ApiException as exc:
                if exc.status != 403 or "RESTMapping" not in str(exc.body):
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for the API server's RESTMapper to know FlexTrainJob"
                )
            time.sleep(1)


def token_kubeconfig(api: client.ApiClient, plane: ControlPlane, account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig for ServiceAccount `namespace/account`, with a token from TokenRequest."""
    core = client.CoreV1Api(api)
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600 * 6}}
    ).status.token
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {"server": plane.server, "certificate-authority": str(plane.ca_file)},
                    }
                ],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "test", "user": account}}],
                "current-context": "sa",
            }
        )
    )
    return path


def token_id(kubeconfig: Path) -> str:
    """The id (JWT `jti`) of the ServiceAccount token in a kubeconfig of token_kubeconfig:
    the API server's audit log names it in `user.extra` (`authentication.kubernetes.io/
    credential-id: JTI=<id>`), so two processes of one ServiceAccount can be told apart."""
    import base64
    import json

    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


def audit_writes(plane: ControlPlane, token: str | None = None) -> list[dict[str, Any]]:
    """Write requests in the session's audit log (conftest.AUDIT_POLICY), optionally only
    those sent with the token of id `token` (token_id); each request once."""
    import json

    assert plane.audit_log is not None, "the control plane was started without an audit log"
    seen: dict[str, dict[str, Any]] = {}
    if plane.audit_log.exists():
        for line in plane.audit_log.read_text().splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            ids = ((event.get("user") or {}).get("extra") or {}).get("authentication.kubernetes.io/credential-id", [])
            if token is None or f"JTI={token}" in ids:
                seen[event["auditID"]] = event
    return list(seen.values())


def chart_operator_env(api: client.ApiClient, release: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """The operator container's plain environment from the installed chart's Deployment."""
    apps = client.AppsV1Api(api)
    deployment = next(
        d
        for d in apps.list_namespaced_deployment(namespace).items
        if d.metadata.labels.get("app.kubernetes.io/instance") == release
    )
    container = deployment.spec.template.spec.containers[0]
    return {e.name: e.value for e in container.env or [] if e.value is not None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class OperatorProcess:
    """`flextrain operator` as a local process with a given kubeconfig and env."""

    kubeconfig: Path
    env: Mapping[str, str]
    log: Path
    #: What it serves: `-A` (every namespace) or `-n NS ...`.
    scope: tuple[str, ...] = ("-A",)
    proc: subprocess.Popen[bytes] | None = None
    liveness_port: int = 0
    starts: int = 0

    def start(self) -> OperatorProcess:
        self.liveness_port = free_port()
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)}
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n=== operator start {self.starts} ===\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [
                    str(REPO / ".venv" / "bin" / "flextrain"),
                    "operator",
                    *self.scope,
                    "--log-format",
                    "text",
                    "--liveness",
                    f"http://127.0.0.1:{self.liveness_port}/healthz",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_live(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"operator exited: {self.tail()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"operator not live within {timeout} s: {self.tail()}")

    def health(self) -> dict[str, Any] | None:
        """The liveness endpoint's body: kopf's probes on the leader (`{"jobs": n, "leader":
        true}`), `{"leader": false, "holder": ...}` on a standby; None when it does not answer."""
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                body: dict[str, Any] = json.loads(r.read())
                return body
        except (OSError, ValueError):
            return None

    def wait_leader(self, timeout: float = 60) -> None:
        """Until this process leads (reconciles): at once without leader election, else
        once it holds the Lease and kopf runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"operator exited: {self.tail()}"
            if (self.health() or {}).get("leader") is True:
                return
            time.sleep(0.2)
        raise AssertionError(f"operator not leading within {timeout} s: {self.health()} {self.tail()}")

    def kill(self) -> None:
        """SIGKILL, as a node failure or OOM kill would end it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def forbidden(self) -> list[str]:
        """Log lines that report an RBAC denial of the operator's own ServiceAccount (a
        403 from a quota or an admission policy, which tests provoke, is not one)."""
        return [line for line in self.text().splitlines() if RBAC_DENIAL.search(line)]


def objects(docs: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(docs) if d]
