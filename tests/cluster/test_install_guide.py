"""docs/install.md, walked as a new platform engineer would, on a fresh control plane of
its own: every bash block marked `<!-- guide-test: STEP -->` runs as written, with the
real helm and kubectl, in a directory that holds the repository's charts/ and examples/
(the guide's commands run from a checkout). What the guide says a command gives (`#
yes`, `# no`, `# refused`, an output table) is checked (tests/guide.py). The nodes are
named as in the guide and carry no pool labels or taints until its commands put them on.

Between the steps, what the guide's cluster would do by itself: the operator runs as a
local process with the chart's ServiceAccount and settings once the chart is installed
(the Deployment's pod is only marked running by the node agent: nothing is pulled here).

The chart rendered with user-set security contexts, affinity and tolerations goes to the
same API server as a server-side dry run."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from tests import guide
from tests.cluster import install, nodes
from tests.cluster.conftest import FAST_OPERATOR_ENV, wait_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.node_agent import NodeAgent
from tests.tools import REPO, ensure_tools

RELEASE, SYSTEM, NAMESPACE = "flextrain", "flextrain-system", "ml-line-1"
CRDS = ("flextrainjobs.flextrain.dev", "devicetiers.flextrain.dev")
#: The steps of the guide, in its order; a step that disappears from the guide fails here.
STEPS = ["validate", "pools", "gpus", "install", "upgrade", "tiers", "job", "examples", "watch", "users", "as-users",
         "delete-jobs", "uninstall", "remove-crds"]
#: Seconds an expected answer or table is polled for.
SETTLE = 90.0


@dataclasses.dataclass(frozen=True)
class GuidePool(nodes.Pool):
    """A pool whose nodes are named as in the guide (cpu-01, ...)."""

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i:02d}" for i in range(1, self.count + 1)]


#: The test cluster's pools, bare: the guide labels and taints them.
BARE_POOLS = tuple(GuidePool(p.name, p.count, p.arch, {}, (), p.allocatable) for p in nodes.POOLS)


@dataclasses.dataclass
class Cluster:
    plane: ControlPlane
    api: client.ApiClient
    agent: NodeAgent
    work: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("install-guide")
    plane = ControlPlane.start(work / "controlplane")
    agent: NodeAgent | None = None
    try:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        names = nodes.register(api, BARE_POOLS)
        nodes.wait_untainted(api, timeout=60)
        agent = NodeAgent(api, names, work / "node-agent").start()
        yield Cluster(plane, api, agent, work)
    finally:
        if agent is not None:
            agent.stop()
        code = plane.stop()
        assert code == 0, f"control plane exited {code}; log: {plane.log}"


class Shell:
    """Runs the guide's commands as a reader would: bash, in a checkout-like directory,
    with helm and kubectl on PATH and the control plane's admin kubeconfig."""

    def __init__(self, plane: ControlPlane, work: Path) -> None:
        self.cwd = work / "checkout"
        self.cwd.mkdir()
        for name in ("charts", "examples", "crds", ".venv"):
            (self.cwd / name).symlink_to(REPO / name)
        tools = ensure_tools()
        self.env = {
            **os.environ,
            "PATH": f"{tools}:{os.environ['PATH']}",
            "KUBECONFIG": str(plane.kubeconfig),
            **{f"HELM_{d}_HOME": str(work / "helm" / d.lower()) for d in ("CACHE", "CONFIG", "DATA")},
        }
        self.transcript: list[str] = []

    def run(self, text: str, timeout: float = 360) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", text], cwd=self.cwd, env=self.env, capture_output=True,
            text=True, timeout=timeout, check=False,
        )
        self.transcript.append(f"$ {text}\n{done.stdout}{done.stderr}(exit {done.returncode})")
        return done

    def check(self, command: guide.Command, where: str) -> subprocess.CompletedProcess[str]:
        """Run `command` and hold it to what the guide says it gives."""
        if command.expect == "refused":
            done = self.run(command.text)
            assert done.returncode != 0, f"{where}: the guide says refused, it passed:\n{done.stdout}"
            assert "forbidden" in done.stderr.lower(), f"{where}: failed, but not Forbidden:\n{done.stderr}"
            return done
        if command.expect in ("yes", "no") or command.table:
            last: subprocess.CompletedProcess[str] | None = None
            deadline = time.monotonic() + SETTLE
            while True:
                last = self.run(command.text)
                problem = self._differs(command, last)
                if problem is None:
                    return last
                if time.monotonic() > deadline:
                    raise AssertionError(f"{where}: {problem}\n$ {command.text}\n{last.stdout}{last.stderr}")
                time.sleep(1)
        done = self.run(command.text)
        assert done.returncode == 0, f"{where}: exit {done.returncode}\n$ {command.text}\n{done.stdout}{done.stderr}"
        return done

    @staticmethod
    def _differs(command: guide.Command, done: subprocess.CompletedProcess[str]) -> str | None:
        if command.expect in ("yes", "no"):
            answer = done.stdout.strip()
            code = 0 if command.expect == "yes" else 1
            if answer != command.expect or done.returncode != code:
                return f"answered {answer!r} (exit {done.returncode}), the guide says {command.expect}"
            return None
        if done.returncode != 0:
            return f"exit {done.returncode}: {done.stderr}"
        return guide.table_mismatch(command.table, done.stdout)


def start_operator(cluster: Cluster, release: str, namespace: str) -> install.OperatorProcess:
    """`flextrain operator` as a local process with the release's ServiceAccount and the
    environment of its Deployment (the cluster tests' way; docs/development.md)."""
    api = cluster.api
    account = release if "flextrain" in release else f"{release}-flextrain"  # the chart's fullname
    install.wait_owner_kind_known(api, cluster.plane, timeout=90, account=account, namespace=namespace)
    kubeconfig = install.token_kubeconfig(api, cluster.plane, account, namespace, cluster.work / f"{release}.kubeconfig")
    env = {
        **install.chart_operator_env(api, release, namespace),
        "FLEXTRAIN_OPERATOR_SELF_METRICS_PORT": str(install.free_port()),
        **FAST_OPERATOR_ENV,
        "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS":
            f"dns://{cluster.agent.dns.authority}/{{service}}.{{namespace}}.svc:{{port}}",
    }
    proc = install.OperatorProcess(kubeconfig, env, cluster.work / f"{release}-operator.log").start()
    proc.wait_live()
    proc.wait_leader()  # the chart elects a leader: this process, alone
    return proc


def crds_present(api: client.ApiClient) -> set[str]:
    ext = client.ApiextensionsV1Api(api)
    return {c.metadata.name for c in ext.list_custom_resource_definition().items} & set(CRDS)


@pytest.mark.timeout(180)
def test_the_chart_with_user_set_security_and_affinity_passes_a_server_side_dry_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    """What values.schema.json and kubernetes-validate check offline, the API server
    checks for real; and it refuses what only it knows (a Localhost seccomp profile needs
    its file), which the offline checks let through."""
    kubectl, helm = ensure_tools() / "kubectl", ensure_tools() / "helm"
    namespace = "dryrun-system"
    client.CoreV1Api(cluster.api).create_namespace({"metadata": {"name": namespace}})

    def dry_run(*values: str) -> subprocess.CompletedProcess[str]:
        rendered = subprocess.run(
            [str(helm), "template", "ft", str(install.CHART), "--namespace", namespace, *values],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        return subprocess.run(
            [str(kubectl), "--kubeconfig", str(cluster.plane.kubeconfig), "apply", "--dry-run=server",
             "-n", namespace, "-f", "-"],
            input=rendered, capture_output=True, text=True, timeout=120, check=False,
        )

    scheduling = install.CHART / "ci" / "scheduling-values.yaml"
    done = dry_run("-f", str(scheduling))
    assert done.returncode == 0, done.stderr
    assert "deployment.apps/ft-flextrain created (server dry run)" in done.stdout, done.stdout
    assert "clusterrole.rbac.authorization.k8s.io/ft-flextrain-edit created (server dry run)" in done.stdout

    bad = tmp_path / "localhost-seccomp.yaml"
    bad.write_text(yaml.safe_dump({"podSecurityContext": {"seccompProfile": {"type": "Localhost"}}}))
    offline = subprocess.run(
        [str(helm), "template", "ft", str(install.CHART), "-f", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert offline.returncode == 0, "values.schema.json refused it: this case shows nothing"
    done = dry_run("-f", str(bad))
    assert done.returncode != 0, done.stdout
    assert "seccompProfile.localhostProfile: Required value" in done.stderr, done.stderr


@pytest.mark.timeout(900)
def test_every_command_of_the_install_guide_runs_as_written(cluster: Cluster) -> None:
    shell = Shell(cluster.plane, cluster.work)
    api = cluster.api
    operator: install.OperatorProcess | None = None
    blocks = guide.blocks(guide.GUIDE.read_text())
    steps = [b.step for b in blocks if b.step is not None]
    assert steps == STEPS, f"the guide's tested steps changed: {steps}"

    def after(step: str) -> None:
        nonlocal operator
        apps, rbac = client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
        if step == "pools":
            labelled = {n.metadata.name: (n.metadata.labels.get("flextrain.dev/pool"), len(n.spec.taints or []))
                        for n in client.CoreV1Api(api).list_node().items}
            assert labelled["cpu-01"] == ("cpu", 0) and labelled["edge-02"] == ("edge", 1), labelled
            assert labelled["gpu-01"][1] == 1, labelled
        elif step == "install":
            deployment = apps.read_namespaced_deployment(RELEASE, SYSTEM)
            assert deployment.status.available_replicas == 2  # a leader and a standby
            image = deployment.spec.template.spec.containers[0].image
            assert image.startswith("registry.factory.example:5000/ml/flextrain-operator:"), image
            operator = start_operator(cluster, RELEASE, SYSTEM)
        elif step == "upgrade":
            history = shell.run(f"helm history {RELEASE} -n {SYSTEM} -o yaml")
            revisions = yaml.safe_load(history.stdout)
            assert [(r["revision"], r["status"]) for r in revisions] == [(1, "superseded"), (2, "deployed")]
            args = apps.read_namespaced_deployment(RELEASE, SYSTEM).spec.template.spec.containers[0].args
            assert "--log-format=text" in args, args
        elif step == "job":
            wait_for(lambda: _exists(lambda: apps.read_namespaced_deployment("quickstart-aggregator", NAMESPACE)),
                     timeout=60, what="the quickstart's aggregator from the operator")
        elif step == "users":
            # The controller manager's clusterrole-aggregation controller put FlexTrain's
            # rules into the built-in roles.
            for role in ("edit", "admin", "view"):
                rules = rbac.read_cluster_role(role).rules or []
                assert any("flextrainjobs" in (r.resources or []) for r in rules), role
        elif step == "as-users":
            custom = client.CustomObjectsApi(api)
            jobs = custom.list_namespaced_custom_object("flextrain.dev", "v1alpha1", NAMESPACE, "flextrainjobs")
            assert [j["metadata"]["name"] for j in jobs["items"]] == ["quickstart"]
        elif step == "delete-jobs":
            assert operator is not None
            denials = operator.forbidden()
            assert not denials, "RBAC denials of the chart's operator:\n" + "\n".join(denials[:10])
            operator.stop()
            operator = None
        elif step == "uninstall":
            assert crds_present(api) == set(CRDS), "helm uninstall removed the CRDs despite crds.keep"
            left = [r.metadata.name for r in rbac.list_cluster_role().items
                    if (r.metadata.labels or {}).get("app.kubernetes.io/instance") == RELEASE]
            assert left == [], f"helm uninstall left ClusterRoles: {left}"
        elif step == "remove-crds":
            wait_for(lambda: not crds_present(api), timeout=60, what="the CRDs to be deleted")

    try:
        for block in blocks:
            if block.step is None:
                continue
            for command in block.commands:
                shell.check(command, f"docs/install.md:{block.line} ({block.step})")
            after(block.step)
    except BaseException:
        print("\n\n".join(shell.transcript[-15:]))
        if operator is not None:
            print(operator.tail())
        raise
    finally:
        if operator is not None:
            operator.stop()
    tested = [c for b in blocks if b.step is not None for c in b.commands]
    skipped = [c for b in blocks if b.step is None for c in b.commands]
    print(f"\ndocs/install.md: {len(tested)} commands run as written ({len(shell.transcript)} runs with the"
          f" polls), {len(skipped)} in blocks marked not run")


def _exists(read: Callable[[], object]) -> bool:
    with contextlib.suppress(client.ApiException):
        read()
        return True
    return False


@pytest.mark.timeout(300)
def test_a_chart_tier_on_the_factorys_own_label_selects_exactly_those_nodes(cluster: Cluster, tmp_path: Path) -> None:
    """The reported case on the real cluster: the default `cpu-x86` tier moved to the
    factory's label `factory.local/pool: cpu`, which only cpu-01 carries (it lost the
    default pool label). The DeviceTier `helm install` creates selects on that label
    alone, and the operator finds one node for it; merged with the default's
    `flextrain.dev/pool: cpu` it would have found none."""
    release, namespace = "plant", "plant-system"
    core, custom = client.CoreV1Api(cluster.api), client.CustomObjectsApi(cluster.api)
    values = tmp_path / "plant-values.yaml"
    spec = {"architecture": "amd64", "nodeSelector": {"factory.local/pool": "cpu"},
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}
    values.write_text(yaml.safe_dump({"deviceTiers": {"enabled": True, "tiers": [{"name": "cpu-x86", "spec": spec}]}}))
    before = {n.metadata.name: dict(n.metadata.labels) for n in core.list_node().items}
    core.patch_node("cpu-01", {"metadata": {"labels": {"factory.local/pool": "cpu", "flextrain.dev/pool": None}}})
    core.patch_node("cpu-02", {"metadata": {"labels": {"flextrain.dev/pool": "cpu"}}})
    shell = Shell(cluster.plane, tmp_path)
    operator: install.OperatorProcess | None = None
    try:
        done = shell.run(f"helm install {release} charts/flextrain -n {namespace} --create-namespace -f {values} "
                         "--wait --timeout 120s")
        assert done.returncode == 0, done.stderr
        operator = start_operator(cluster, release, namespace)
        tier = custom.get_cluster_custom_object("flextrain.dev", "v1alpha1", "devicetiers", "cpu-x86")
        assert tier["spec"] == spec, tier["spec"]

        def ready_nodes() -> object:
            status = custom.get_cluster_custom_object("flextrain.dev", "v1alpha1", "devicetiers", "cpu-x86").get("status")
            return status if status and "readyNodes" in status else None

        status = wait_for(ready_nodes, timeout=60, what="the operator's count of the tier's nodes")
        assert status["readyNodes"] == 1, status
        assert not operator.forbidden(), operator.forbidden()
    finally:
        if operator is not None:
            operator.stop()
        shell.run(f"helm uninstall {release} -n {namespace} --wait")
        shell.run("kubectl delete devicetiers cpu-x86 --ignore-not-found")
        shell.run(f"kubectl delete crd {' '.join(CRDS)} --ignore-not-found")
        for name in ("cpu-01", "cpu-02"):
            labels = {k: before[name].get(k) for k in ("factory.local/pool", "flextrain.dev/pool")}
            core.patch_node(name, {"metadata": {"labels": labels}})
