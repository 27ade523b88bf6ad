"""Kueue admits a FlexTrainJob as one gang, on the real control plane with a real Kueue.

Kueue's own controllers, scheduler and webhooks (tests/cluster/kueue, built from the
pinned sigs.k8s.io/kueue module) run against the test API server; the chart is
installed a second time with `kueue.enabled=true` (its RBAC is what the operator runs
with) serving the test's namespace. A ResourceFlavor per DeviceTier, a ClusterQueue with
quota for one job's pods, a LocalQueue; two identical jobs: the first is admitted and all
its pods are created at once, the second waits with nothing running even though its CPU
tier and its aggregator would fit (its GPU tier does not: all or nothing), and it is
admitted once the first finishes."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster import install
from tests.cluster.conftest import FAST_OPERATOR_ENV, wait_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kueue_manager import KueueManager, version
from tests.cluster.node_agent import NodeAgent
from tests.cluster.test_operator import Jobs, factory_job

KUEUE = ("kueue.x-k8s.io", "v1beta2")
RELEASE = "ftkq"
SYSTEM = "ftkq-system"
Body = dict[str, Any]


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueManager]:
    manager = KueueManager.start(control_plane, tmp_path_factory.mktemp("kueue"))
    print(f"\nKueue {version()} manager ready (webhooks registered) in {manager.start_seconds:.1f} s")
    try:
        yield manager
    finally:
        began = time.monotonic()
        code = manager.stop()
        print(f"\nKueue's CRDs, webhooks and manager removed in {time.monotonic() - began:.1f} s")
        assert code == 0, f"the Kueue manager exited {code} on SIGTERM:\n{manager.tail()}"


def _kueue_object(api: client.ApiClient, plural: str, body: Body, namespace: str | None = None) -> Body:
    custom = client.CustomObjectsApi(api)
    if namespace:
        made: Body = custom.create_namespaced_custom_object(*KUEUE, namespace, plural, body)
    else:
        made = custom.create_cluster_custom_object(*KUEUE, plural, body)
    return made


@contextlib.contextmanager
def _queues(api: client.ApiClient, namespace: str, suffix: str) -> Iterator[tuple[str, str]]:
    """A ResourceFlavor per DeviceTier of the job (same node labels, the GPU nodes' taint),
    a ClusterQueue with quota for one job (CPU tier, aggregator and GPU tier), and a
    LocalQueue in `namespace`. Yields (ClusterQueue, LocalQueue)."""
    custom = client.CustomObjectsApi(api)
    flavors = {
        f"cpu-x86-{suffix}": {"nodeLabels": {"flextrain.dev/pool": "cpu"}},
        f"gpu-{suffix}": {
            "nodeLabels": {"nvidia.com/gpu.present": "true"},
            "nodeTaints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        },
    }
    cluster_queue = f"factory-{suffix}"
    quotas = {
        # One job: CPU tier 2 x (2 CPU, 4Gi) + aggregator (1 CPU, 2Gi) = 5 CPU, 10Gi. Twice
        # that, so the second job's CPU tier and aggregator fit while the first runs.
        f"cpu-x86-{suffix}": {"cpu": "10", "memory": "20Gi", "nvidia.com/gpu": "0"},
        # One job's GPU tier: 1 x (4 CPU, 16Gi, 1 GPU).
        f"gpu-{suffix}": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
    }
    try:
        for name, spec in flavors.items():
            _kueue_object(api, "resourceflavors", {"apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec})
        _kueue_object(
            api,
            "clusterqueues",
            {
                "apiVersion": "/".join(KUEUE),
                "kind": "ClusterQueue",
                "metadata": {"name": cluster_queue},
                "spec": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                            "flavors": [
                                {"name": name, "resources": [{"name": r, "nominalQuota": q} for r, q in quota.items()]}
                                for name, quota in quotas.items()
                            ],
                        }
                    ],
                },
            },
        )
        _kueue_object(
            api,
            "localqueues",
            {"apiVersion": "/".join(KUEUE), "kind": "LocalQueue", "metadata": {"name": "training", "namespace": namespace}, "spec": {"clusterQueue": cluster_queue}},
            namespace,
        )
        yield cluster_queue, "training"
    finally:
        with contextlib.suppress(client.ApiException):
            custom.delete_namespaced_custom_object(*KUEUE, namespace, "localqueues", "training")
        with contextlib.suppress(client.ApiException):
            custom.delete_cluster_custom_object(*KUEUE, "clusterqueues", cluster_queue)
        for name in flavors:
            with contextlib.suppress(client.ApiException):
                custom.delete_cluster_custom_object(*KUEUE, "resourceflavors", name)


@contextlib.contextmanager
def _kueue_operator(
    control_plane: ControlPlane, api: client.ApiClient, agent: NodeAgent, helm_binary: Path, namespace: str, work: Path
) -> Iterator[install.OperatorProcess]:
    """A second release of the chart with kueue.enabled=true serving `namespace`, and its
    operator as a local process with that release's ServiceAccount."""
    done = install.helm(
        helm_binary, control_plane, "install", RELEASE, str(install.CHART), "--namespace", SYSTEM, "--create-namespace",
        "--set", "crds.enabled=false", "--set", "watch.clusterWide=false", "--set", f"watch.namespaces[0]={namespace}",
        "--set", "kueue.enabled=true", "--wait", "--timeout", "120s",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    proc: install.OperatorProcess | None = None
    try:
        kubeconfig = install.token_kubeconfig(api, control_plane, f"{RELEASE}-flextrain", SYSTEM, work / "kubeconfig")
        env = {
            **install.chart_operator_env(api, RELEASE, SYSTEM),
            **FAST_OPERATOR_ENV,
            "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS": f"dns://{agent.dns.authority}/{{service}}.{{namespace}}.svc:{{port}}",
        }
        assert env["FLEXTRAIN_OPERATOR_KUEUE"] == "true"
        proc = install.OperatorProcess(kubeconfig, env, work / "operator.log", scope=("-n", namespace)).start()
        proc.wait_live()
        proc.wait_leader()  # the chart elects a leader (the release's own Lease): this one, alone
        yield proc
    finally:
        if proc is not None:
            proc.stop()
            denials = proc.forbidden()
            assert not denials, "RBAC denials with kueue.enabled:\n" + "\n".join(denials[:10])
        install.helm(helm_binary, control_plane, "uninstall", RELEASE, "--namespace", SYSTEM, "--wait")


def _gang_job(name: str, namespace: str) -> Body:
    body = factory_job(name, namespace, queueName="training")
    body["spec"]["tiers"] = [
        {"name": "gpu", "deviceTierRef": "gpu", "replicas": 1, "depth": 9},
        {"name": "cpu", "deviceTierRef": "cpu-x86", "replicas": 2, "depth": 5},
    ]
    return body


def _workload(api: client.ApiClient, namespace: str, name: str) -> Body | None:
    try:
        got: Body = client.CustomObjectsApi(api).get_namespaced_custom_object(*KUEUE, namespace, "workloads", name)
    except client.ApiException:
        return None
    return got


def _condition(body: Body | None, type_: str) -> Body | None:
    for cond in ((body or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def _is_true(body: Body | None, type_: str) -> bool:
    cond = _condition(body, type_)
    return bool(cond and cond.get("status") == "True")


def _crd_exists(api: client.ApiClient, name: str) -> bool:
    try:
        client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


@pytest.mark.timeout(300)
def test_with_kueue_on_and_no_kueue_installed_jobs_without_a_queue_still_run(
    control_plane: ControlPlane,
    api: client.ApiClient,
    agent: NodeAgent,
    operator: install.OperatorProcess,
    helm_binary: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    """kueue.enabled on a cluster without Kueue's CRDs (runs before the `kueue` fixture
    installs them): the operator starts, serves jobs without a queueName as usual, and a
    job with one says that its Workload cannot be created."""
    wait_for(lambda: not _crd_exists(api, "workloads.kueue.x-k8s.io"), timeout=60, what="no Kueue CRDs")
    operator.stop()
    try:
        with _kueue_operator(control_plane, api, agent, helm_binary, namespace, tmp_path) as proc:
            jobs = Jobs(api, namespace)
            jobs.create(factory_job("plain", namespace))
            wait_for(lambda: jobs.all_children_created("plain", 3), timeout=60, what="the plain job's children")
            wait_for(lambda: len(jobs.trainer_pods("plain")) == 5, timeout=60, what="the plain job's trainer pods")
            jobs.create(_gang_job("queued", namespace))
            wait_for(
                lambda: (jobs.condition("queued", "Progressing") or {}).get("reason") == "ChildCreateFailed",
                timeout=60,
                what="the queued job's refused Workload reported",
            )
            progressing = jobs.condition("queued", "Progressing")
            assert "Workload queued" in progressing["message"] and "404" in progressing["message"], progressing  # type: ignore[index]
            assert jobs.condition("queued", "Admitted")["reason"] == "Queued"  # type: ignore[index]
            assert jobs.children("queued")["Job"] == [] and jobs.trainer_pods("queued") == []
            assert "Unresolved resources cannot be served" in proc.text()
    finally:
        operator.start()
        operator.wait_live()
        operator.wait_leader()


@pytest.mark.timeout(420)
def test_kueue_admits_each_job_as_one_gang_and_the_second_runs_when_the_first_finishes(
    control_plane: ControlPlane,
    api: client.ApiClient,
    agent: NodeAgent,
    operator: install.OperatorProcess,
    kueue: KueueManager,
    helm_binary: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    operator.stop()  # the cluster-wide operator (Kueue off) would serve this namespace too
    suffix = uuid.uuid4().hex[:5]
    try:
        with _queues(api, namespace, suffix) as (cluster_queue, _), _kueue_operator(
            control_plane, api, agent, helm_binary, namespace, tmp_path
        ):
            jobs = Jobs(api, namespace)
            jobs.create(_gang_job("first", namespace))
            first = wait_for(
                lambda: _is_true(w := _workload(api, namespace, "first"), "Admitted") and w,
                timeout=60,
                what="the first job's Workload admitted",
            )
            pod_sets = {p["name"]: p["count"] for p in first["spec"]["podSets"]}
            assert pod_sets == {"gpu": 1, "cpu": 2, "aggregator": 1}
            flavors = {a["name"]: set(a["flavors"].values()) for a in first["status"]["admission"]["podSetAssignments"]}
            assert flavors == {"gpu": {f"gpu-{suffix}"}, "cpu": {f"cpu-x86-{suffix}"}, "aggregator": {f"cpu-x86-{suffix}"}}
            wait_for(lambda: len(jobs.trainer_pods("first")) == 3, timeout=60, what="the first job's 3 trainer pods")
            wait_for(
                lambda: (jobs.condition("first", "Admitted") or {}).get("reason") == "Admitted",
                timeout=30,
                what="the first job's condition Admitted=True",
            )
            # The flavor's node labels are on the pods (Kueue's placement), with the tier's own.
            gpu_pod = next(p for p in jobs.trainer_pods("first") if p.metadata.labels["flextrain.dev/tier"] == "gpu")
            assert gpu_pod.spec.node_selector["nvidia.com/gpu.present"] == "true"

            jobs.create(_gang_job("second", namespace))
            second = wait_for(
                lambda: (w := _workload(api, namespace, "second")) and _condition(w, "QuotaReserved") and w,
                timeout=60,
                what="the second job's Workload evaluated by Kueue",
            )
            # Gang: its CPU tier and aggregator would fit the CPU flavor's remaining quota,
            # its GPU tier fits nowhere: nothing of it runs, not even a tier Job.
            time.sleep(3)
            second = _workload(api, namespace, "second")
            assert not _is_true(second, "QuotaReserved") and not _is_true(second, "Admitted"), second
            # Partial fit: the CPU flavor's quota left by the first job holds the second's CPU
            # tier and aggregator (Kueue's own accounting of both Workloads' requests), and
            # Kueue finds no quota short there; only its GPU tier does not fit.
            def requests(workload: Body | None, pod_sets: tuple[str, ...]) -> tuple[int, int]:
                status = (workload or {})["status"]
                if status.get("admission"):  # admitted: what Kueue charged the flavors
                    rows = {a["name"]: a["resourceUsage"] for a in status["admission"]["podSetAssignments"]}
                else:  # pending: what it asks for
                    rows = {r["name"]: r["resources"] for r in status["resourceRequests"]}
                cpu = sum(int(rows[p]["cpu"]) for p in pod_sets)
                gib = sum(int(rows[p]["memory"].removesuffix("Gi")) for p in pod_sets)
                return cpu, gib
            used = requests(first, ("cpu", "aggregator"))
            wanted = requests(second, ("cpu", "aggregator"))
            assert wanted[0] <= 10 - used[0] and wanted[1] <= 20 - used[1], (used, wanted)
            waiting = _condition(second, "QuotaReserved")["message"]  # type: ignore[index]
            assert "pod set gpu" in waiting and f"insufficient unused quota for nvidia.com/gpu in flavor gpu-{suffix}" in waiting, waiting
            assert f"quota for cpu in flavor cpu-x86-{suffix}" not in waiting, waiting
            assert jobs.children("second")["Job"] == [] and jobs.children("second")["Deployment"] == []
            assert jobs.trainer_pods("second") == []
            status = jobs.get("second")["status"]
            assert status["phase"] == "Pending"
            admitted = jobs.condition("second", "Admitted")
            assert admitted and admitted["status"] == "False" and admitted["reason"] == "Queued", admitted
            assert "training" in admitted["message"] and "insufficient" in admitted["message"].lower(), admitted
            print(f"\nsecond job waiting: {admitted['message']}")

            # The first job finishes: every trainer exits 0.
            wait_for(
                lambda: all(p.status.phase == "Running" for p in jobs.trainer_pods("first")),
                timeout=60,
                what="the first job's trainer pods running",
            )
            for pod in jobs.trainer_pods("first"):
                agent.finish(namespace, pod.metadata.name, 0)
            t0 = time.monotonic()
            marks: dict[str, float] = {}
            deadline = t0 + 120
            # Each stage only follows the one before; probed latest first, so that a stage
            # seen in a round has its predecessors seen in that round too (one timestamp
            # per round of reads, about 0.1 s apart).
            stages = [
                ("second's 3 trainer pods created", lambda: len(jobs.trainer_pods("second")) == 3),
                ("second tier Jobs created", lambda: len(jobs.children("second")["Job"]) == 2),
                ("second admitted", lambda: _is_true(_workload(api, namespace, "second"), "Admitted")),
                ("first Workload Finished", lambda: _is_true(_workload(api, namespace, "first"), "Finished")),
                # Written in the same pass as Finished (after it): not part of the chain.
                ("first Succeeded", lambda: (jobs.get("first").get("status") or {}).get("phase") == "Succeeded"),
            ]
            while time.monotonic() < deadline and len(marks) < len(stages):
                now = time.monotonic() - t0
                for what, seen in stages:
                    if what not in marks and seen():
                        marks[what] = now
                time.sleep(0.05)
            timeline = "\n".join(f"  +{t:6.2f} s  {w}" for w, t in sorted(marks.items(), key=lambda kv: (kv[1], kv[0])))
            print(f"\nKueue gang timeline (from the first job's last trainer exiting 0):\n{timeline}")
            assert len(marks) == 5, f"missing: {timeline}"
            # The causal chain (the operator marks the Workload Finished in the pass that
            # finds the job Succeeded, just before it writes the job's status).
            chain = [w for w, _ in reversed(stages) if w != "first Succeeded"]
            assert [marks[w] for w in chain] == sorted(marks[w] for w in chain), timeline
            assert abs(marks["first Succeeded"] - marks["first Workload Finished"]) < 1.0, timeline
            wait_for(
                lambda: (jobs.condition("second", "Admitted") or {}).get("reason") == "Admitted",
                timeout=30,
                what="the second job's condition Admitted=True",
            )
            wait_for(
                lambda: (client.CustomObjectsApi(api).get_cluster_custom_object(*KUEUE, "clusterqueues", cluster_queue).get("status") or {}).get("admittedWorkloads") == 1,
                timeout=30,
                what="the ClusterQueue to count one admitted Workload (the second)",
            )

            # Eviction: the LocalQueue is stopped (HoldAndDrain), Kueue evicts the running
            # second job; the operator stops its pods and gives the quota back; once the
            # queue runs again Kueue admits it again and its pods come back.
            custom = client.CustomObjectsApi(api)
            custom.patch_namespaced_custom_object(*KUEUE, namespace, "localqueues", "training", {"spec": {"stopPolicy": "HoldAndDrain"}})
            stopped_at = time.monotonic()
            wait_for(lambda: jobs.trainer_pods("second") == [], timeout=60, what="the evicted job's trainer pods gone")
            pods_gone = time.monotonic() - stopped_at
            wait_for(
                lambda: not _is_true(w := _workload(api, namespace, "second"), "QuotaReserved") and _is_true(w, "Evicted"),
                timeout=60,
                what="the evicted job's quota given back",
            )
            released = time.monotonic() - stopped_at
            assert all(j.spec.suspend for j in jobs.batch.list_namespaced_job(namespace, label_selector="flextrain.dev/job=second").items)
            wait_for(
                lambda: (jobs.condition("second", "Admitted") or {}).get("reason") == "Evicted",
                timeout=30,
                what="the second job's condition Admitted=False, reason Evicted",
            )
            print(f"\nevicted: {jobs.condition('second', 'Admitted')['message']}")  # type: ignore[index]
            custom.patch_namespaced_custom_object(*KUEUE, namespace, "localqueues", "training", {"spec": {"stopPolicy": "None"}})
            resumed_at = time.monotonic()
            wait_for(lambda: len(jobs.trainer_pods("second")) == 3, timeout=60, what="the second job's pods back after re-admission")
            print(
                f"eviction (LocalQueue HoldAndDrain): trainer pods gone after {pods_gone:.2f} s, quota given back "
                f"after {released:.2f} s; queue resumed -> 3 trainer pods again after {time.monotonic() - resumed_at:.2f} s"
            )
            assert _is_true(_workload(api, namespace, "second"), "Admitted")

            # The queue of a job is fixed once it is created (the CRD's transition rules).
            for patch in ({"spec": {"queueName": "other"}}, {"spec": {"queueName": None}}):
                with pytest.raises(client.ApiException) as refused:
                    jobs.patch("second", patch)
                assert refused.value.status == 422 and "queueName is immutable" in str(refused.value.body)
    finally:
        operator.start()
        operator.wait_live()
        operator.wait_leader()


def test_the_kueue_example_is_what_kueue_and_the_api_server_accept(
    api: client.ApiClient,
    installed_chart: Any,
    kueue: KueueManager,
    kubectl: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    """examples/kueue: the ResourceFlavors, ClusterQueue and LocalQueue pass Kueue's own
    webhooks and CRDs (server-side dry run), and the queued job passes FlexTrain's CRD."""
    import yaml

    from tests.tools import REPO

    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "kueue" / "queues.yaml").read_text()) if d]
    docs += [yaml.safe_load((REPO / "examples" / "kueue" / "job.yaml").read_text())]
    assert {d["kind"] for d in docs} == {"ResourceFlavor", "ClusterQueue", "LocalQueue", "FlexTrainJob"}
    for doc in docs:
        if "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = namespace
    path = tmp_path / "kueue-example.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    done = kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(server dry run)") == len(docs), done.stdout
    # ... and Kueue's webhooks do run: a flavor with a toleration Kueue refuses is refused.
    bad = {**docs[0], "spec": {"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}}
    refused = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert refused.returncode != 0 and "operator" in refused.stderr, refused.stderr
