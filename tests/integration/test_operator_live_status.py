"""Status mirrored from a real aggregator: the operator builds the children, the test
runs the aggregator and the trainers as real processes on loopback with exactly the
environment of those children, and the operator's status timer reads GetStatus into the
FlexTrainJob (round, accuracy per depth, last round pushed per tier, Succeeded)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.factories import make_tier
from tests.integration.operator_harness import (
    DEPLOYMENTS,
    FAST,
    JOBS,
    NS,
    SECRETS,
    Cluster,
    emulated_cluster,
    eventually,
    node,
    running_operator,
)
from tests.integration.procs import REPO, child_env

pytestmark = pytest.mark.timeout(240)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path) as made:
        yield made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _container_env(
    pod: dict[str, Any], secret: dict[str, Any], root: Path
) -> dict[str, str]:
    """The container's env as the kubelet resolves it (secretKeyRefs from `secret`), with
    each Secret volume written under `root` as the kubelet would (only its `items`) and
    the paths into it rewritten there."""
    [container] = pod["containers"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("secret")
        if source is None:
            continue
        assert source["secretName"] == secret["metadata"]["name"]
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        for item in source["items"]:
            (local / item["path"]).write_bytes(base64.b64decode(secret["data"][item["key"]]))
        mounts[mount["mountPath"]] = local
    env = {}
    for var in container["env"]:
        if "valueFrom" in var:
            key = var["valueFrom"]["secretKeyRef"]["key"]
            env[var["name"]] = base64.b64decode(secret["data"][key]).decode()
        else:
            value = var["value"]
            for path, local in mounts.items():
                if value.startswith(path + "/"):
                    value = str(local) + value[len(path) :]
            env[var["name"]] = value
    return env


LIVE_JOB: dict[str, Any] = {
    "apiVersion": "flextrain.dev/v1alpha1",
    "kind": "FlexTrainJob",
    "metadata": {"name": "live", "namespace": NS},
    "spec": {
        "model": {"family": "resnet", "layers": 8},
        "dataset": {"name": "synthetic", "limit": 600, "seed": 1},
        "training": {"rounds": 2, "localEpochs": 1, "batchSize": 32},
        "aggregation": {"roundTimeoutSeconds": 60},
        "tiers": [
            {"name": "shallow", "deviceTierRef": "local", "replicas": 1, "depth": 1},
            {"name": "deep", "deviceTierRef": "local", "replicas": 1, "depth": 3},
        ],
    },
}


async def test_round_and_accuracy_come_from_the_real_aggregator(
    cluster: Cluster, tmp_path: Path
) -> None:
    port = _free_port()
    settings = dataclasses.replace(
        FAST, aggregator_addresses={f"{NS}/live": f"127.0.0.1:{port}"}, status_interval=0.3
    )
    await cluster.create(node("box-1", {"flextrain.dev/pool": "local"}))
    await cluster.create(make_tier("local", resources={"requests": {"cpu": "1", "memory": "1Gi"}}))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def spawn(name: str, env: dict[str, str], *args: str) -> None:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "flextrain", *args],
                    cwd=REPO,
                    env=child_env(**env),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def output() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)

    try:
        async with running_operator(cluster, settings):
            await cluster.create(LIVE_JOB)
            await eventually(
                lambda: (
                    len(cluster.list(JOBS)) == 2 and cluster.get(DEPLOYMENTS, "live-aggregator")
                ),
                what="children",
            )
            secret = cluster.get(SECRETS, "live-token")
            assert secret is not None
            assert len(base64.b64decode(secret["data"]["token"])) >= 32

            # The aggregator, started as its Deployment says (port and checkpoints local).
            deployment = cluster.get(DEPLOYMENTS, "live-aggregator")
            assert deployment is not None
            pod = deployment["spec"]["template"]["spec"]
            assert pod["containers"][0]["command"] == ["flextrain", "aggregator"]
            env = _container_env(pod, secret, tmp_path / "aggregator-volumes")
            # Over TLS with the job's certificate from its Secret (the operator verifies it).
            assert Path(env["FLEXTRAIN_TLS_CERT"]).is_file() and Path(env["FLEXTRAIN_TLS_KEY"]).is_file()
            env.update(
                FLEXTRAIN_PORT=str(port),
                FLEXTRAIN_HEALTH_PORT=str(_free_port()),
                FLEXTRAIN_METRICS_PORT="0",
                HOME=str(tmp_path),
                FLEXTRAIN_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
            )
            spawn("aggregator", env, "aggregator", "--host", "127.0.0.1", "--log-format", "text")
            await cluster.set_status(DEPLOYMENTS, NS, "live-aggregator", {"availableReplicas": 1})
            await eventually(
                lambda: (
                    (c := cluster.condition("live", "AggregatorReady")) and c["status"] == "True"
                ),
                timeout=60,
                what="the aggregator to answer",
            )

            # The trainers, one per completion index, with their Job's environment.
            for job in cluster.list(JOBS):
                root = tmp_path / f"{job['metadata']['name']}-volumes"
                env = _container_env(job["spec"]["template"]["spec"], secret, root)
                assert env["FLEXTRAIN_AGGREGATOR"] == "live-aggregator.default.svc:50051"
                # The trainers get the job's CA alone, and verify the Service's name.
                assert [f.name for f in (root / "tls").iterdir()] == ["ca.crt"]
                assert env["FLEXTRAIN_TLS_SERVER_NAME"] == "live-aggregator.default.svc"
                env.update(
                    FLEXTRAIN_AGGREGATOR=f"127.0.0.1:{port}",
                    HOME=str(tmp_path),
                    FLEXTRAIN_THREADS="1",
                )
                for index in range(job["spec"]["completions"]):
                    spawn(
                        f"{job['metadata']['name']}-{index}",
                        {**env, "JOB_COMPLETION_INDEX": str(index)},
                        "trainer",
                        "--log-format",
                        "text",
                    )
                await cluster.set_status(
                    JOBS,
                    NS,
                    job["metadata"]["name"],
                    {"active": job["spec"]["completions"], "ready": job["spec"]["completions"]},
                )

            status = await eventually(
                lambda: (s := cluster.status("live")).get("phase") == "Succeeded" and s,
                timeout=180,
                what=f"training to finish\n{output()}",
            )
            trainers = procs[1:]  # the aggregator serves until it is stopped
            await eventually(
                lambda: all(p.poll() is not None for p in trainers),
                timeout=60,
                what="the trainers to exit",
            )
            assert [p.returncode for p in trainers] == [0] * len(trainers), output()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)

    assert status["round"] == 2 and status["totalRounds"] == 2
    accuracy = {a["depth"]: a for a in status["accuracy"]}
    assert set(accuracy) == {1, 3}, status
    assert all(a["round"] == 2 and 0 <= a["accuracy"] <= 1 for a in accuracy.values())
    assert status["bestAccuracy"] == max(a["accuracy"] for a in accuracy.values())
    assert {t["name"]: t["lastRoundPushed"] for t in status["tiers"]} == {"shallow": 2, "deep": 2}
    progressing = cluster.condition("live", "Progressing")
    assert progressing is not None and progressing["reason"] == "TrainingComplete"
    complete = cluster.condition("live", "Complete")
    assert complete is not None and "pvc://live-checkpoints/models/" in complete["message"]
