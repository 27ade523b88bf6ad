"""A second release of the chart that serves named namespaces only
(`watch.clusterWide=false`: a ClusterRole for the cluster-scoped rules, a Role per
namespace): its operator serves those namespaces, leaves the others alone, and needs no
more than those rules."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster import install
from tests.cluster.conftest import FAST_OPERATOR_ENV, wait_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.node_agent import NodeAgent
from tests.cluster.test_operator import Jobs, factory_job

RELEASE = "ftns"
SYSTEM = "ftns-system"


@contextlib.contextmanager
def _namespaces(api: client.ApiClient, *names: str) -> Iterator[None]:
    core = client.CoreV1Api(api)
    for name in names:
        core.create_namespace({"metadata": {"name": name}})
    try:
        yield
    finally:
        for name in names:
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(name)


@pytest.mark.timeout(300)
def test_an_operator_for_named_namespaces_serves_only_those(
    control_plane: ControlPlane,
    api: client.ApiClient,
    agent: NodeAgent,
    operator: install.OperatorProcess,
    helm_binary: Path,
    tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:5]
    served, other = f"served-{suffix}", f"other-{suffix}"
    operator.stop()  # the cluster-wide operator would serve both namespaces
    proc: install.OperatorProcess | None = None
    try:
        with _namespaces(api, served, other):
            done = install.helm(
                helm_binary,
                control_plane,
                "install",
                RELEASE,
                str(install.CHART),
                "--namespace",
                SYSTEM,
                "--create-namespace",
                "--set",
                "crds.enabled=false",
                "--set",
                "watch.clusterWide=false",
                "--set",
                f"watch.namespaces[0]={served}",
                "--wait",
                "--timeout",
                "120s",
            )
            assert done.returncode == 0, done.stderr
            kubeconfig = install.token_kubeconfig(api, control_plane, f"{RELEASE}-flextrain", SYSTEM, tmp_path / "kubeconfig")
            env = {
                **install.chart_operator_env(api, RELEASE, SYSTEM),
                **FAST_OPERATOR_ENV,
                "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS": f"dns://{agent.dns.authority}/{{service}}.{{namespace}}.svc:{{port}}",
            }
            proc = install.OperatorProcess(kubeconfig, env, tmp_path / "operator.log", scope=("-n", served)).start()
            proc.wait_live()

            mine, theirs = Jobs(api, served), Jobs(api, other)
            mine.create(factory_job("here", served))
            theirs.create(factory_job("elsewhere", other))
            wait_for(lambda: mine.all_children_created("here", 3), timeout=60, what="children in the served namespace")
            wait_for(lambda: len(mine.trainer_pods("here")) == 5, timeout=60, what="trainer pods")
            assert not any(theirs.children("elsewhere").values()), "an unserved namespace got children"
            assert "status" not in theirs.get("elsewhere") or not theirs.get("elsewhere")["status"]
            denials = proc.forbidden()
            assert not denials, "RBAC denials with the namespaced chart:\n" + "\n".join(denials[:10])
    finally:
        if proc is not None:
            proc.stop()
        install.helm(helm_binary, control_plane, "uninstall", RELEASE, "--namespace", SYSTEM, "--wait")
        operator.start()
        operator.wait_live()
