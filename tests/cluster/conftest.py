"""Cluster tests: one real control plane for the session (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler from Kubernetes' own modules), the factory's
node pools registered on it, and the node agent playing their kubelets.

Every test here is marked `cluster` (deselect with `-m "not cluster"`). The control
plane is built by scripts/build-controlplane.sh on first use (Go and the Go module
proxy are needed; the first build takes 5-8 minutes, later ones seconds).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.cluster import install, nodes
from tests.cluster.controlplane import ControlPlane
from tests.cluster.node_agent import NodeAgent
from tests.tools import REPO, ensure_tools


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


#: The session's audit log: every write of a ServiceAccount of the chart's namespace (the
#: operator's), at level Metadata (who, with which token, what, when). Tests tell two
#: operator processes apart by their tokens' ids (audit.writes_by).
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts:{install.NAMESPACE}"]
  verbs: [create, update, patch, delete, deletecollection]
- level: None
"""


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    work = tmp_path_factory.mktemp("controlplane")
    (work / "audit-policy.yaml").write_text(AUDIT_POLICY)
    plane = ControlPlane.start(work, audit_log=work / "audit.log", audit_policy=work / "audit-policy.yaml")
    print(f"\ncontrol plane ready in {plane.start_seconds:.1f} s at {plane.server}")
    try:
        yield plane
    finally:
        code = plane.stop()
        assert code == 0, f"control plane exited {code} on SIGTERM; log: {plane.log}"


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    """An admin API client (system:masters)."""
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def node_names(api: client.ApiClient) -> list[str]:
    names = nodes.register(api)
    nodes.wait_untainted(api, timeout=60)
    return names


@pytest.fixture(scope="session")
def agent(
    api: client.ApiClient, node_names: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgent]:
    running = NodeAgent(api, node_names, tmp_path_factory.mktemp("node-agent")).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Callable[..., subprocess.CompletedProcess[str]]:
    """kubectl(*args, check=True, input=None) with the admin kubeconfig."""
    binary = ensure_tools() / "kubectl"

    def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(binary), "--kubeconfig", str(control_plane.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    return run


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test (deleted afterwards, by the real namespace controller)."""
    core = client.CoreV1Api(api)
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: _default_sa(core, name), timeout=30, what=f"default ServiceAccount in {name}")
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            core.delete_namespace(name)


def _default_sa(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
    except client.ApiException:
        return False
    return True


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    return ensure_tools() / "helm"


@pytest.fixture(scope="session")
def installed_chart(
    control_plane: ControlPlane, api: client.ApiClient, agent: NodeAgent, helm_binary: Path
) -> subprocess.CompletedProcess[str]:
    """`helm install` of the chart with its default DeviceTiers, as an admin would; the
    tests start once the API server can check FlexTrainJob owner references."""
    done = install.install_chart(helm_binary, control_plane, "deviceTiers.enabled=true")
    install.wait_owner_kind_known(api, control_plane, timeout=60)
    return done


#: Operator settings of the cluster tests: the chart's environment with shorter intervals.
FAST_OPERATOR_ENV = {
    "FLEXTRAIN_OPERATOR_STATUS_INTERVAL": "1",
    "FLEXTRAIN_OPERATOR_TIER_DEBOUNCE": "0.2",
    "FLEXTRAIN_OPERATOR_FINISH_GRACE": "3",
    "FLEXTRAIN_OPERATOR_CLAIM_PENDING_AFTER": "3",
}


@pytest.fixture(scope="session")
def operator(
    control_plane: ControlPlane,
    api: client.ApiClient,
    agent: NodeAgent,
    installed_chart: subprocess.CompletedProcess[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[install.OperatorProcess]:
    """The operator as a local process with the chart's ServiceAccount token and env.

    Trainer pods and the operator reach aggregators through the node agent's cluster DNS.
    The session fails if the operator met a 403 at any time.
    """
    work = tmp_path_factory.mktemp("operator")
    account = f"{install.RELEASE}-flextrain"
    kubeconfig = install.token_kubeconfig(api, control_plane, account, install.NAMESPACE, work / "sa.kubeconfig")
    env = {
        **install.chart_operator_env(api),
        # Not the chart's fixed port: this machine may have it taken.
        "FLEXTRAIN_OPERATOR_SELF_METRICS_PORT": str(install.free_port()),
        **FAST_OPERATOR_ENV,
        "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS": f"dns://{agent.dns.authority}/{{service}}.{{namespace}}.svc:{{port}}",
    }
    proc = install.OperatorProcess(kubeconfig, env, work / "operator.log").start()
    proc.wait_live()
    proc.wait_leader()  # the chart elects a leader: this one, alone, within a retry period
    try:
        yield proc
    finally:
        proc.stop()
        forbidden = proc.forbidden()
        assert not forbidden, "the operator met 403s with the chart's RBAC:\n" + "\n".join(forbidden[:20])
