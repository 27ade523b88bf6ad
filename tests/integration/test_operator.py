"""The real kopf operator, in process, against the Kubernetes emulator: children, phases,
conditions, lifecycle. The tests play the Job controller, the Deployment controller and
the scheduler by patching status."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.factories import make_job, make_tier
from tests.integration.operator_harness import (
    DEPLOYMENTS,
    DT,
    FAST,
    FTJ,
    JOBS,
    NS,
    PODS,
    SECRETS,
    SERVICES,
    Cluster,
    emulated_cluster,
    eventually,
    job_controller,
    node,
    running_operator,
)

pytestmark = pytest.mark.timeout(60)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path) as made:
        yield made


async def _tiers(cluster: Cluster) -> None:
    """A GPU pool (tainted) and a CPU pool, each with one Ready node."""
    await cluster.create(
        node(
            "gpu-1",
            {"nvidia.com/gpu.present": "true"},
            gpus=2,
            taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
        )
    )
    await cluster.create(node("cpu-1", {"flextrain.dev/pool": "cpu"}, cpu="16", memory="64Gi"))
    await cluster.create(
        make_tier(
            "gpu",
            nodeSelector={"nvidia.com/gpu.present": "true"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            accelerator={"type": "nvidia.com/gpu", "count": 1},
            resources={
                "requests": {"cpu": "4", "memory": "16Gi"},
                "limits": {"cpu": "8", "memory": "32Gi"},
            },
            image="registry.example/flextrain:cuda",
            capacity={"memory": "16Gi"},
        )
    )
    await cluster.create(make_tier("cpu", capacity={"parameters": 25000}))


def _two_tier_job(name: str = "train", **spec: Any) -> dict[str, Any]:
    return make_job(
        name,
        tiers=[
            {"name": "deep", "deviceTierRef": "gpu", "replicas": 2, "depth": 9},
            {"name": "weak", "deviceTierRef": "cpu", "replicas": 2, "depth": "auto"},
        ],
        **spec,
    )


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


async def _children(cluster: Cluster, job: str, tiers: int) -> None:
    await eventually(
        lambda: (
            len(
                [
                    j
                    for j in cluster.list(JOBS)
                    if j["metadata"]["labels"]["flextrain.dev/job"] == job
                ]
            )
            == tiers
            and cluster.get(DEPLOYMENTS, f"{job}-aggregator")
            and cluster.get(SERVICES, f"{job}-aggregator")
            and cluster.get(SECRETS, f"{job}-token")
        ),
        what=f"children of {job}",
    )


async def _available(cluster: Cluster, job: str) -> None:
    await cluster.set_status(
        DEPLOYMENTS,
        NS,
        f"{job}-aggregator",
        {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1},
    )


async def test_job_gets_secret_aggregator_and_one_indexed_job_per_tier(cluster: Cluster) -> None:
    await _tiers(cluster)
    async with running_operator(cluster):
        created = await cluster.create(_two_tier_job())
        uid = created["metadata"]["uid"]
        await _children(cluster, "train", 2)

        for obj in (
            cluster.get(SECRETS, "train-token"),
            cluster.get(SERVICES, "train-aggregator"),
            cluster.get(DEPLOYMENTS, "train-aggregator"),
            cluster.get(JOBS, "train-deep"),
            cluster.get(JOBS, "train-weak"),
        ):
            assert obj is not None
            [ref] = obj["metadata"]["ownerReferences"]
            assert ref["uid"] == uid and ref["controller"] and ref["kind"] == "FlexTrainJob"
            assert obj["metadata"]["labels"]["flextrain.dev/job"] == "train"
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "flextrain-operator"

        secret = cluster.get(SECRETS, "train-token")
        assert secret is not None and len(base64.b64decode(secret["data"]["token"])) >= 32

        deep = cluster.get(JOBS, "train-deep")
        assert deep is not None
        spec = deep["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == spec["parallelism"] == 2
        assert spec["backoffLimitPerIndex"] == FAST.backoff_limit_per_index
        assert deep["metadata"]["labels"]["flextrain.dev/tier"] == "deep"
        pod = spec["template"]["spec"]
        assert pod["nodeSelector"] == {
            "nvidia.com/gpu.present": "true",
            "kubernetes.io/arch": "amd64",
        }
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        [trainer] = pod["containers"]
        assert trainer["image"] == "registry.example/flextrain:cuda"  # the DeviceTier's image
        assert trainer["resources"]["limits"] == {
            "cpu": "8",
            "memory": "32Gi",
            "nvidia.com/gpu": "1",
        }
        env = _env(trainer)
        assert env["FLEXTRAIN_AGGREGATOR"] == "train-aggregator.default.svc:50051"
        assert "FLEXTRAIN_TOKEN" not in env  # the job token stays with the aggregator
        assert env["FLEXTRAIN_TIER_KEY"] == {"secretKeyRef": {"name": "train-token", "key": "tier-deep"}}
        assert (env["FLEXTRAIN_JOB"], env["FLEXTRAIN_TIER"], env["FLEXTRAIN_DEPTH"]) == (
            "train",
            "deep",
            "9",
        )
        assert env["FLEXTRAIN_DEVICE"] == "cuda" and env["FLEXTRAIN_PARTITION"] == "iid"
        assert "FLEXTRAIN_REPLICA_INDEX" not in env  # JOB_COMPLETION_INDEX picks the shard

        weak = cluster.get(JOBS, "train-weak")
        assert weak is not None
        [weak_trainer] = weak["spec"]["template"]["spec"]["containers"]
        assert weak_trainer["image"] == FAST.image
        assert weak["spec"]["template"]["spec"]["nodeSelector"]["flextrain.dev/pool"] == "cpu"
        assert "tolerations" not in weak["spec"]["template"]["spec"]
        assert _env(weak_trainer)["FLEXTRAIN_DEVICE"] == "cpu"

        deployment = cluster.get(DEPLOYMENTS, "train-aggregator")
        assert deployment is not None
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        [agg] = deployment["spec"]["template"]["spec"]["containers"]
        assert agg["command"] == ["flextrain", "aggregator"]
        # TLS by default: probed on the plaintext health port, the job's chain in its Secret.
        assert agg["readinessProbe"]["grpc"] == {"port": FAST.aggregator_health_port}
        assert deployment["metadata"]["annotations"]["flextrain.dev/tls"] == "Enabled"
        assert {"ca.crt", "tls.crt", "tls.key", "ca.key"} <= set(secret["data"])
        service = cluster.get(SERVICES, "train-aggregator")
        assert (
            service is not None
            and service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        )

        # depth: auto resolved from the DeviceTier's capacity, in status and an Event.
        status = await eventually(
            lambda: cluster.status("train").get("tiers") and cluster.status("train")
        )
        depths = {t["name"]: (t["depth"], t["depthSource"]) for t in status["tiers"]}
        assert depths == {"deep": (9, "fixed"), "weak": (3, "auto")}
        assert _env(weak_trainer)["FLEXTRAIN_DEPTH"] == "3"
        [event] = cluster.events("DepthChosen")
        assert "weak=3 (auto from DeviceTier cpu capacity)" in event["message"]
        assert status["phase"] == "Pending" and status["tiersReady"] == "0/2"
        assert status["aggregatorEndpoint"] == "train-aggregator.default.svc:50051"
        assert cluster.condition("train", "TiersAvailable")["status"] == "True"
        assert cluster.condition("train", "AggregatorReady")["reason"] == "AggregatorStarting"


async def test_running_then_degraded_by_a_failed_tier_then_succeeded(cluster: Cluster) -> None:
    await _tiers(cluster)
    set_job = job_controller(cluster)
    async with running_operator(cluster):
        await cluster.create(_two_tier_job(aggregation={"quorum": 0.5}))
        await _children(cluster, "train", 2)
        await _available(cluster, "train")
        await set_job("train-deep", ready=2)
        await set_job("train-weak", ready=2)
        await eventually(lambda: cluster.status("train").get("phase") == "Running", what="Running")
        assert cluster.status("train")["tiersReady"] == "2/2"
        assert cluster.condition("train", "AggregatorReady")["status"] == "True"

        await set_job(
            "train-weak",
            failed=8,
            condition="Failed",
            reason="FailedIndexes",
            message="Job has failed indexes",
        )
        await eventually(
            lambda: cluster.status("train").get("phase") == "Degraded", what="Degraded"
        )
        degraded = cluster.condition("train", "Degraded")
        assert degraded is not None and degraded["reason"] == "TierJobFailed"
        assert "tier weak" in degraded["message"] and "2 of 4 devices" in degraded["message"]
        assert any("tier weak" in e["message"] for e in cluster.events("TierJobFailed"))
        assert (
            cluster.get(DEPLOYMENTS, "train-aggregator")["spec"]["replicas"] == 1
        )  # still training

        await set_job("train-deep", succeeded=2, condition="Complete")
        await set_job("train-weak", succeeded=2, condition="Complete")
        await eventually(
            lambda: cluster.status("train").get("phase") == "Succeeded", what="Succeeded"
        )
        status = cluster.status("train")
        assert status["completionTime"] and status["startTime"]
        complete = cluster.condition("train", "Complete")
        assert complete is not None and complete["reason"] == "TrainingComplete"
        # Once the trainers are done the aggregator stops: no pod of the job keeps running.
        await eventually(
            lambda: cluster.get(DEPLOYMENTS, "train-aggregator")["spec"]["replicas"] == 0,
            what="the aggregator scaled to 0",
        )


async def test_losing_the_quorum_fails_the_job_and_stops_everything(cluster: Cluster) -> None:
    await _tiers(cluster)
    set_job = job_controller(cluster)
    async with running_operator(cluster):
        await cluster.create(_two_tier_job(aggregation={"quorum": 0.75}))
        await _children(cluster, "train", 2)
        await _available(cluster, "train")
        await set_job("train-deep", ready=2)
        await set_job("train-weak", ready=1, failed=4, failed_indexes="1")  # 3 of 4 still train
        await eventually(
            lambda: (
                cluster.condition("train", "Degraded")
                and cluster.condition("train", "Degraded")["status"] == "True"
            )
        )
        assert cluster.status("train")["phase"] == "Degraded"
        assert (
            "1 of 2 replicas failed permanently"
            in cluster.condition("train", "Degraded")["message"]
        )

        await set_job("train-deep", failed=6, condition="Failed", reason="BackoffLimitExceeded")
        await eventually(lambda: cluster.status("train").get("phase") == "Failed", what="Failed")
        failed = cluster.condition("train", "Failed")
        assert failed is not None and failed["reason"] == "QuorumLost"
        assert "needs 3" in failed["message"] and "tier deep" in failed["message"]
        await eventually(
            lambda: (
                cluster.get(DEPLOYMENTS, "train-aggregator")["spec"]["replicas"] == 0
                and cluster.get(JOBS, "train-weak")["spec"]["suspend"] is True
            ),
            what="everything stopped",
        )


async def test_a_missing_device_tier_blocks_until_it_is_created(cluster: Cluster) -> None:
    await cluster.create(node("cpu-1", {"flextrain.dev/pool": "cpu"}))
    async with running_operator(cluster):
        await cluster.create(make_job("waiting"))
        condition = await eventually(lambda: cluster.condition("waiting", "TiersAvailable"))
        assert condition["status"] == "False" and condition["reason"] == "DeviceTierNotFound"
        assert "DeviceTier 'cpu'" in condition["message"]
        assert cluster.status("waiting")["phase"] == "Pending"
        [warning] = await eventually(lambda: cluster.events("DeviceTierNotFound"))
        assert warning["type"] == "Warning" and warning["involvedObject"]["name"] == "waiting"
        await asyncio.sleep(0.5)
        assert cluster.list(JOBS) == [] and cluster.list(DEPLOYMENTS) == []

        await cluster.create(make_tier("cpu"))
        await _children(cluster, "waiting", 2)
        await eventually(lambda: cluster.condition("waiting", "TiersAvailable")["status"] == "True")


async def test_no_ready_node_gives_conditions_until_a_node_appears(cluster: Cluster) -> None:
    await cluster.create(node("cpu-down", {"flextrain.dev/pool": "cpu"}, ready=False))
    await cluster.create(make_tier("cpu"))
    async with running_operator(cluster):
        await cluster.create(make_job("early"))
        condition = await eventually(
            lambda: (
                (c := cluster.condition("early", "TiersAvailable")) and c["status"] == "False" and c
            )
        )
        assert (
            condition["reason"] == "NoMatchingNodes" and "DeviceTier 'cpu'" in condition["message"]
        )
        assert cluster.events("NoMatchingNodes")
        tier_status = await eventually(lambda: (cluster.get(DT, "cpu") or {}).get("status"))
        assert tier_status["readyNodes"] == 0 and tier_status["nodes"] == 1
        assert tier_status["conditions"][0]["reason"] == "NoMatchingNodes"
        # Children exist anyway: pods wait for nodes (and a cluster autoscaler sees them).
        await _children(cluster, "early", 2)

        await cluster.set_status(
            "v1/nodes", None, "cpu-down", {"conditions": [{"type": "Ready", "status": "True"}]}
        )
        await cluster.create(node("cpu-2", {"flextrain.dev/pool": "cpu"}, cpu="4", memory="8Gi"))
        await eventually(lambda: cluster.condition("early", "TiersAvailable")["status"] == "True")
        tier_status = await eventually(
            lambda: (s := cluster.get(DT, "cpu")["status"]) and s["readyNodes"] == 2 and s
        )
        assert tier_status["allocatableCpu"] == "12" and tier_status["allocatableMemory"] == "40Gi"
        assert tier_status["conditions"][0]["status"] == "True"


async def test_unschedulable_trainer_pods_degrade_the_job_naming_the_tier(cluster: Cluster) -> None:
    await _tiers(cluster)
    async with running_operator(cluster):
        await cluster.create(_two_tier_job(aggregation={"quorum": 0.5}))
        await _children(cluster, "train", 2)
        deep = cluster.get(JOBS, "train-deep")
        assert deep is not None
        labels = deep["spec"]["template"]["metadata"]["labels"]
        await cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "train-deep-0-abcde", "namespace": NS, "labels": labels},
                "spec": {"containers": [{"name": "trainer", "image": "x"}]},
            }
        )
        await cluster.set_status(
            PODS,
            NS,
            "train-deep-0-abcde",
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/2 nodes are available: 1 Insufficient nvidia.com/gpu.",
                    }
                ],
            },
        )
        degraded = await eventually(
            lambda: (c := cluster.condition("train", "Degraded")) and c["status"] == "True" and c
        )
        assert degraded["reason"] == "PodsUnschedulable"
        assert "tier deep: 1 pod(s) cannot be scheduled" in degraded["message"]
        assert "Insufficient nvidia.com/gpu" in degraded["message"]
        assert cluster.status("train")["phase"] == "Degraded"


async def test_deleting_the_job_removes_it_and_its_children(cluster: Cluster) -> None:
    await _tiers(cluster)
    async with running_operator(cluster) as op:
        await cluster.create(_two_tier_job())
        await _children(cluster, "train", 2)
        obj = cluster.get(FTJ, "train")
        assert obj is not None and "flextrain.dev/operator" in obj["metadata"]["finalizers"]
        assert op.runtime.jobs == 1

        assert await cluster.delete(FTJ, NS, "train") in (200, 202)
        await eventually(lambda: cluster.get(FTJ, "train") is None, what="the job to go")
        # The finalizer came off once the job's daemon stopped; the garbage collector
        # (emulated: ownerReferences) removed every child.
        for resource in (JOBS, DEPLOYMENTS, SERVICES, SECRETS):
            assert cluster.list(resource) == [], resource
        await eventually(lambda: op.runtime.jobs == 0, what="the operator to forget the job")


async def test_a_restarted_operator_creates_nothing_twice(cluster: Cluster) -> None:
    await _tiers(cluster)
    async with running_operator(cluster):
        await cluster.create(_two_tier_job())
        await _children(cluster, "train", 2)
        await eventually(lambda: cluster.status("train").get("tiers"))
    posts_before = cluster.api.count_requests("POST", "/namespaces/default/")
    status_before = cluster.status("train")
    async with running_operator(cluster) as op:
        await eventually(lambda: op.runtime.stats["reconciles"] >= 3, what="a few passes")
    assert cluster.api.count_requests("POST", "/namespaces/default/") == posts_before
    assert len(cluster.list(JOBS)) == 2 and len(cluster.list(SECRETS)) == 1
    assert op.runtime.stats["created"] == 0
    status_after = cluster.status("train")
    assert status_after["startTime"] == status_before["startTime"]
    assert status_after["tiers"] == status_before["tiers"]


async def test_a_new_job_gets_its_secret_without_a_lookup_first(cluster: Cluster) -> None:
    # A job with no status and no child is new: its token is made and its Secret created
    # at once (a 409 would mean it existed after all); only an older job's Secret is read.
    await _tiers(cluster)
    async with running_operator(cluster):
        await cluster.create(_two_tier_job())
        await _children(cluster, "train", 2)
        await eventually(lambda: cluster.status("train").get("tiers"))
    assert cluster.api.count_requests("GET", "/secrets/train-token") == 0
    async with running_operator(cluster) as op:
        await eventually(lambda: op.runtime.stats["reconciles"] >= 1, what="a pass")
    assert cluster.api.count_requests("GET", "/secrets/train-token") == 1


async def test_suspend_stops_trainers_and_resume_continues(cluster: Cluster) -> None:
    await _tiers(cluster)
    set_job = job_controller(cluster)
    job = _two_tier_job(checkpoint={"persistentVolumeClaim": {"claimName": "ckpt"}})
    async with running_operator(cluster):
        await cluster.create(job)
        await _children(cluster, "train", 2)
        await _available(cluster, "train")
        await set_job("train-deep", ready=2)
        await set_job("train-weak", ready=2)
        await eventually(lambda: cluster.status("train").get("phase") == "Running")

        await cluster.patch(FTJ, NS, "train", {"spec": {"suspend": True}})
        await eventually(
            lambda: all(
                cluster.get(JOBS, n)["spec"]["suspend"] is True
                for n in ("train-deep", "train-weak")
            ),
            what="Jobs suspended",
        )
        await eventually(
            lambda: cluster.get(DEPLOYMENTS, "train-aggregator")["spec"]["replicas"] == 0
        )
        await set_job("train-deep")
        await set_job("train-weak")
        await cluster.set_status(DEPLOYMENTS, NS, "train-aggregator", {"availableReplicas": 0})
        await eventually(lambda: cluster.status("train").get("phase") == "Suspended")
        suspended = cluster.condition("train", "Suspended")
        assert suspended is not None and suspended["status"] == "True"
        assert "checkpoint" in suspended["message"]

        await cluster.patch(FTJ, NS, "train", {"spec": {"suspend": False}})
        await eventually(
            lambda: all(
                cluster.get(JOBS, n)["spec"]["suspend"] is False
                for n in ("train-deep", "train-weak")
            ),
            what="Jobs resumed",
        )
        await eventually(
            lambda: cluster.get(DEPLOYMENTS, "train-aggregator")["spec"]["replicas"] == 1
        )
        resumed = await eventually(
            lambda: (c := cluster.condition("train", "Suspended")) and c["status"] == "False" and c
        )
        assert resumed["reason"] == "Resumed"
        await _available(cluster, "train")
        await set_job("train-deep", ready=2)
        await set_job("train-weak", ready=2)
        await eventually(lambda: cluster.status("train").get("phase") == "Running")
        assert [
            e["reason"] for e in cluster.events() if e["reason"] in ("Suspended", "Resumed")
        ] == ["Suspended", "Resumed"]


async def test_active_deadline_fails_the_job_and_ttl_deletes_it(cluster: Cluster) -> None:
    await _tiers(cluster)
    async with running_operator(cluster):
        await cluster.create(_two_tier_job(activeDeadlineSeconds=1, ttlSecondsAfterFinished=1))
        await _children(cluster, "train", 2)
        failed = await eventually(lambda: cluster.condition("train", "Failed"), what="Failed")
        assert failed["reason"] == "DeadlineExceeded"
        assert cluster.status("train")["phase"] == "Failed"
        await eventually(lambda: cluster.get(FTJ, "train") is None, what="TTL deletion")
        assert cluster.events("TTLExpired")


async def test_user_edits_and_pod_template_are_kept(cluster: Cluster) -> None:
    await _tiers(cluster)
    job = _two_tier_job(
        podTemplate={
            "labels": {"team": "vision", "app.kubernetes.io/part-of": "factory-ai"},
            "env": [
                {"name": "FLEXTRAIN_DEVICE", "value": "cpu"},
                {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            ],
            "serviceAccountName": "trainers",
            "imagePullSecrets": [{"name": "registry"}],
        }
    )
    # The tenancy policy lets jobs choose their ServiceAccount only when the operator says so.
    async with running_operator(cluster, dataclasses.replace(FAST, allow_service_account=True)) as op:
        await cluster.create(job)
        await _children(cluster, "train", 2)
        deep = cluster.get(JOBS, "train-deep")
        assert deep is not None
        template = deep["spec"]["template"]
        assert template["metadata"]["labels"]["team"] == "vision"
        assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "factory-ai"
        assert template["metadata"]["labels"]["flextrain.dev/job"] == "train"
        env = _env(template["spec"]["containers"][0])
        assert env["FLEXTRAIN_DEVICE"] == "cpu" and env["HTTPS_PROXY"] == "http://proxy:3128"
        assert template["spec"]["serviceAccountName"] == "trainers"
        assert template["spec"]["imagePullSecrets"] == [{"name": "registry"}]

        # An edit to a child survives later passes: the operator only patches the fields it
        # owns (suspend, replicas).
        await cluster.patch(
            JOBS,
            NS,
            "train-deep",
            {"metadata": {"annotations": {"note": "mine"}}, "spec": {"backoffLimitPerIndex": 7}},
        )
        passes = op.runtime.stats["reconciles"]
        await eventually(lambda: op.runtime.stats["reconciles"] >= passes + 3)
        edited = cluster.get(JOBS, "train-deep")
        assert edited is not None and edited["spec"]["backoffLimitPerIndex"] == 7
        assert edited["metadata"]["annotations"] == {"note": "mine"}


async def test_changing_tiers_after_start_is_explained_and_ignored(cluster: Cluster) -> None:
    await _tiers(cluster)
    async with running_operator(cluster):
        await cluster.create(_two_tier_job())
        await _children(cluster, "train", 2)
        # kube-apiserver refuses this with the CRD's CEL rule; the emulator does not check.
        job = cluster.get(FTJ, "train")
        assert job is not None
        tiers = [
            *job["spec"]["tiers"],
            {"name": "extra", "deviceTierRef": "cpu", "replicas": 1, "depth": 2},
        ]
        await cluster.patch(FTJ, NS, "train", {"spec": {"tiers": tiers}})
        condition = await eventually(
            lambda: (
                (c := cluster.condition("train", "Progressing"))
                and c["reason"] == "TiersImmutable"
                and c
            )
        )
        assert condition["status"] == "False" and "delete the FlexTrainJob" in condition["message"]
        assert cluster.events("TiersImmutable")
        await asyncio.sleep(0.5)
        assert sorted(j["metadata"]["name"] for j in cluster.list(JOBS)) == [
            "train-deep",
            "train-weak",
        ]
        assert [t["name"] for t in cluster.status("train")["tiers"]] == ["deep", "weak"]


async def test_status_traffic_is_one_patch_per_change(cluster: Cluster) -> None:
    await _tiers(cluster)
    settings = dataclasses.replace(FAST, status_interval=0.1)
    async with running_operator(cluster, settings) as op:
        await cluster.create(_two_tier_job())
        await _children(cluster, "train", 2)
        await eventually(lambda: op.runtime.stats["reconciles"] >= 20, what="20 passes")
    # Nothing changed after creation: the first status write (plus at most one for the
    # children appearing in the caches), not one per pass.
    assert op.runtime.stats["status_patches"] <= 2, op.runtime.stats


async def test_namespaced_watching_serves_only_its_namespaces(cluster: Cluster) -> None:
    await _tiers(cluster)
    cluster.api.namespaces |= {"team-a", "team-b"}
    settings = dataclasses.replace(FAST, namespaces=("team-a",))
    async with running_operator(cluster, settings):
        served = _two_tier_job("mine")
        served["metadata"]["namespace"] = "team-a"
        ignored = _two_tier_job("theirs")
        ignored["metadata"]["namespace"] = "team-b"
        await cluster.create(served)
        await cluster.create(ignored)
        await eventually(lambda: len(cluster.list(JOBS, "team-a")) == 2, what="team-a's children")
        await asyncio.sleep(0.5)
        assert cluster.list(JOBS, "team-b") == []
        assert not (cluster.get(FTJ, "theirs", "team-b") or {}).get("status")


async def test_liveness_endpoint_answers(cluster: Cluster) -> None:
    import socket

    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with running_operator(cluster, liveness=f"http://127.0.0.1:{port}/healthz"):
        await cluster.create(make_tier("cpu"))
        await cluster.create(make_job("probed"))

        async def healthy() -> Any:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz") as resp,
            ):
                return resp.status == 200 and await resp.json()

        report = await eventually(healthy, what="/healthz")
        assert "jobs" in report
        await eventually(lambda: cluster.status("probed").get("phase"), what="a first status")


async def test_a_job_waiting_for_an_unsatisfiable_depth_is_quiet(cluster: Cluster) -> None:
    """A capacity too small for one block: the job waits, and while nothing changes the
    operator writes its status once, not on every pass (transition times stay put)."""
    await cluster.create(node("cpu-1", {"flextrain.dev/pool": "cpu"}))
    await cluster.create(make_tier("cpu", capacity={"parameters": 10}))
    job = make_job(
        "tight", tiers=[{"name": "weak", "deviceTierRef": "cpu", "replicas": 1, "depth": "auto"}]
    )
    settings = dataclasses.replace(FAST, status_interval=0.1)
    async with running_operator(cluster, settings) as op:
        await cluster.create(job)
        condition = await eventually(
            lambda: (
                (c := cluster.condition("tight", "TiersAvailable"))
                and c["reason"] == "DepthUnsatisfiable"
                and c
            ),
            what="DepthUnsatisfiable",
        )
        writes = op.runtime.stats["status_patches"]
        passes = op.runtime.stats["reconciles"]
        # 25 passes, 0.1 s apart: the clock (whole seconds in transition times) moves twice.
        await eventually(
            lambda: op.runtime.stats["reconciles"] >= passes + 25, what="25 more passes"
        )
        assert op.runtime.stats["status_patches"] == writes, op.runtime.stats
        assert cluster.condition("tight", "TiersAvailable") == condition
        assert len(cluster.events("DepthUnsatisfiable")) == 1


async def test_a_job_with_the_longest_name_gets_its_events(cluster: Cluster) -> None:
    """Object names may be 253 characters long, and so may Event names: the operator's
    Events about such a job are accepted and still name the job."""
    longest = "a" * 200 + "." + "b" * 52
    async with running_operator(cluster):
        await cluster.create(make_job(longest))  # its DeviceTier is missing: a Warning
        [warning] = await eventually(lambda: cluster.events("DeviceTierNotFound"), what="Event")
        assert warning["involvedObject"]["name"] == longest
        assert warning["involvedObject"]["kind"] == "FlexTrainJob"
        assert len(warning["metadata"]["name"]) <= 253


async def test_an_invalid_device_tier_is_reported_as_invalid_not_missing(cluster: Cluster) -> None:
    """A DeviceTier that breaks the CRD's rules (made before a rule existed, or on an API
    server without CEL) is listed by `kubectl get dt`: jobs on it say it is invalid and
    why, and start once it is fixed."""
    await cluster.create(node("cpu-1", {"flextrain.dev/pool": "cpu"}))
    await cluster.create(
        make_tier("cpu", tolerations=[{"key": "dedicated", "operator": "Exists", "value": "ml"}])
    )
    async with running_operator(cluster):
        await cluster.create(make_job("blocked"))
        condition = await eventually(
            lambda: (c := cluster.condition("blocked", "TiersAvailable")) and c["status"] == "False" and c,
            what="TiersAvailable=False",
        )
        assert condition["reason"] == "DeviceTierInvalid", condition
        assert "DeviceTier 'cpu' (tier 'strong') exists but is invalid" in condition["message"]
        assert "spec.tolerations[0].value: value must be empty when operator is Exists" in (
            condition["message"]
        )
        [warning] = await eventually(lambda: cluster.events("DeviceTierInvalid"), what="Warning")
        assert warning["type"] == "Warning" and warning["message"] == condition["message"]
        assert cluster.list(JOBS) == []

        await cluster.patch(
            DT, None, "cpu", {"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}}
        )
        await _children(cluster, "blocked", 2)
        await eventually(
            lambda: cluster.condition("blocked", "TiersAvailable")["status"] == "True",
            what="TiersAvailable=True",
        )


REFUSALS = [
    pytest.param(
        JOBS,
        "train-deep",
        422,
        "Invalid",
        "jobs.batch \"train-deep\" is invalid: : ValidatingAdmissionPolicy 'gpu-jobs' with "
        "binding 'gpu-jobs' denied request: GPU Jobs need a priority class",
        "ChildInvalid",
        id="422-invalid",
    ),
    pytest.param(
        DEPLOYMENTS,
        "train-aggregator",
        403,
        "Forbidden",
        "deployments.apps \"train-aggregator\" is forbidden: exceeded quota: compute, "
        "requested: count/deployments.apps=1, used: count/deployments.apps=4, limited: "
        "count/deployments.apps=4",
        "ChildForbidden",
        id="403-forbidden",
    ),
    pytest.param(
        SERVICES,
        "train-aggregator",
        409,
        "Conflict",
        "Operation cannot be fulfilled on services \"train-aggregator\": the object has "
        "been modified; please apply your changes to the latest version and try again",
        "ChildConflict",
        id="409-conflict",
    ),
]


@pytest.mark.parametrize(("resource", "child", "code", "reason", "message", "condition"), REFUSALS)
async def test_a_refused_child_is_reported_and_retried_with_backoff(
    cluster: Cluster,
    resource: str,
    child: str,
    code: int,
    reason: str,
    message: str,
    condition: str,
) -> None:
    """A create the API server refuses ends as Progressing=False with a reason of its own
    and the server's words, one Warning, and retries that back off (not one per pass);
    once the server accepts, the child is made and the condition clears."""
    await _tiers(cluster)
    cluster.api.refuse(resource, child, code, reason, message)
    settings = dataclasses.replace(FAST, status_interval=0.1)
    async with running_operator(cluster, settings) as op:
        await cluster.create(_two_tier_job())
        progressing = await eventually(
            lambda: (c := cluster.condition("train", "Progressing")) and c["reason"] == condition and c,
            what=f"Progressing {condition}",
        )
        kind = {JOBS: "Job", DEPLOYMENTS: "Deployment", SERVICES: "Service"}[resource]
        assert progressing["status"] == "False"
        assert f"cannot create {kind} {child}" in progressing["message"]
        assert f"{code} {reason}: {message}" in progressing["message"]
        [warning] = await eventually(lambda: cluster.events(condition), what="a Warning")
        assert warning["type"] == "Warning" and warning["message"] == progressing["message"]
        # Everything that does not depend on the refused child is there.
        assert cluster.get(SECRETS, "train-token") is not None
        if resource != JOBS:
            assert cluster.get(JOBS, "train-deep") is not None

        # 3 s of passes 0.1 s apart: retries back off (1 s, 2 s, ...), not 30 attempts.
        plural = resource.rsplit("/", 1)[-1]
        attempts = cluster.api.refused[(plural, child)]
        passes = op.runtime.stats["reconciles"]
        await asyncio.sleep(3.0)
        assert op.runtime.stats["reconciles"] >= passes + 10
        assert cluster.api.refused[(plural, child)] - attempts <= 3
        assert len(cluster.events(condition)) == 1  # one Warning, not one per retry

        cluster.api.allow(resource, child)
        await eventually(
            lambda: cluster.get(resource, child) is not None, what=f"{kind} {child}", timeout=15
        )
        await eventually(
            lambda: cluster.condition("train", "Progressing")["status"] == "True",
            what="Progressing=True again",
        )
        assert any(f"{kind} {child}" in e["message"] for e in cluster.events("Created"))


async def test_a_child_of_someone_else_in_the_way_is_reported_and_left_alone(
    cluster: Cluster,
) -> None:
    """A Job with a tier Job's name that the job does not own (and that carries none of
    its labels, so the watches never show it): 409 AlreadyExists, reported as
    ChildConflict at once, left alone, and replaced by the operator's own once deleted."""
    await _tiers(cluster)
    await cluster.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "train-deep", "namespace": NS},
            "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "x"}]}}},
        }
    )
    async with running_operator(cluster):
        await cluster.create(_two_tier_job())
        progressing = await eventually(
            lambda: (c := cluster.condition("train", "Progressing")) and c["reason"] == "ChildConflict" and c,
            what="ChildConflict",
        )
        assert "cannot create Job train-deep" in progressing["message"]
        assert "409 AlreadyExists" in progressing["message"]
        assert "not this job's" in progressing["message"]
        assert cluster.events("ChildConflict")
        foreign = cluster.get(JOBS, "train-deep")
        assert foreign is not None and "ownerReferences" not in foreign["metadata"]

        assert await cluster.delete(JOBS, NS, "train-deep") == 200
        mine = await eventually(
            lambda: (j := cluster.get(JOBS, "train-deep")) and j.get("metadata", {}).get("ownerReferences") and j,
            what="the operator's own Job", timeout=15,
        )
        assert mine["metadata"]["labels"]["flextrain.dev/job"] == "train"


async def test_a_secret_of_someone_else_keeps_every_workload_away(cluster: Cluster) -> None:
    """`<job>-token` exists and is not the job's: the conflict is reported first and no
    Deployment or Job that would read that Secret's token is created; once it is gone,
    the job makes its own Secret and starts."""
    await _tiers(cluster)
    await cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "train-token", "namespace": NS},
            "data": {"token": base64.b64encode(b"someone else's").decode()},
        }
    )
    async with running_operator(cluster) as op:
        await cluster.create(_two_tier_job())
        progressing = await eventually(
            lambda: (c := cluster.condition("train", "Progressing")) and c["reason"] == "ChildConflict" and c,
            what="ChildConflict",
        )
        assert "Secret train-token" in progressing["message"]
        assert "no aggregator or trainer is created" in progressing["message"]
        [warning] = await eventually(lambda: cluster.events("ChildConflict"), what="a Warning")
        assert warning["type"] == "Warning"
        passes = op.runtime.stats["reconciles"]
        await eventually(lambda: op.runtime.stats["reconciles"] >= passes + 3, what="3 passes")
        assert cluster.list(JOBS) == [] and cluster.list(DEPLOYMENTS) == []
        secret = cluster.get(SECRETS, "train-token")
        assert secret is not None and "ownerReferences" not in secret["metadata"]

        assert await cluster.delete(SECRETS, NS, "train-token") == 200
        await _children(cluster, "train", 2)
        secret = cluster.get(SECRETS, "train-token")
        assert secret is not None and secret["metadata"]["ownerReferences"][0]["kind"] == "FlexTrainJob"
        assert base64.b64decode(secret["data"]["token"]) != b"someone else's"
        await eventually(
            lambda: cluster.condition("train", "Progressing")["reason"] == "TrainersStarting",
            what="the conflict to clear",
        )
