"""The examples, applied with the real kubectl against the emulated API server while
the operator runs, and read back with `kubectl get ftj` (the CRD's printer columns).

`--validate=false`: kubectl validates through the server's OpenAPI documents, which the
emulator does not serve; the CRD schemas are checked offline elsewhere
(tests/unit/api, `flextrain validate`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.integration.operator_harness import (
    DEPLOYMENTS,
    JOBS,
    NS,
    Cluster,
    emulated_cluster,
    eventually,
    node,
    running_operator,
)
from tests.tools import REPO, ensure_tools

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path) as made:
        yield made


async def kubectl(cluster: Cluster, *args: str) -> str:
    """Run kubectl without blocking the event loop that serves the API."""
    proc = await asyncio.create_subprocess_exec(
        str(ensure_tools() / "kubectl"),
        "--kubeconfig",
        str(cluster.kubeconfig),
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


async def test_examples_apply_and_show_in_kubectl_get(cluster: Cluster) -> None:
    ensure_tools()
    for name in ("linux-1", "linux-2"):
        await cluster.create(node(name, {}))
    out = await kubectl(cluster, "apply", "--validate=false", "-f", "crds/")
    assert (
        "customresourcedefinition.apiextensions.k8s.io/flextrainjobs.flextrain.dev created" in out
    )
    async with running_operator(cluster):
        out = await kubectl(
            cluster,
            "apply",
            "--validate=false",
            "-f",
            "examples/devicetiers.yaml",
            "-f",
            "examples/quickstart.yaml",
            "-f",
            "examples/cifar100-resnet56.yaml",
            "-f",
            "examples/fashion-mnist-federated.yaml",
        )
        for created in (
            "devicetier.flextrain.dev/gpu created",
            "flextrainjob.flextrain.dev/quickstart created",
            "flextrainjob.flextrain.dev/cifar100-resnet56 created",
            "flextrainjob.flextrain.dev/fashion-mnist-federated created",
        ):
            assert created in out, out

        # The quickstart's two tiers become two Indexed Jobs; play their controllers.
        await eventually(
            lambda: (
                cluster.get(JOBS, "quickstart-weak")
                and cluster.get(DEPLOYMENTS, "quickstart-aggregator")
            ),
            what="the quickstart's children",
        )
        weak = cluster.get(JOBS, "quickstart-weak")
        assert weak is not None and weak["spec"]["completions"] == 2
        await cluster.set_status(DEPLOYMENTS, NS, "quickstart-aggregator", {"availableReplicas": 1})
        await cluster.set_status(JOBS, NS, "quickstart-strong", {"active": 1, "ready": 1})
        await cluster.set_status(JOBS, NS, "quickstart-weak", {"active": 2, "ready": 2})
        await eventually(lambda: cluster.status("quickstart").get("phase") == "Running")
        await eventually(lambda: cluster.status("cifar100-resnet56").get("phase"))

        table = await kubectl(cluster, "get", "ftj")
        header, *rows = table.strip().splitlines()
        assert header.split() == [
            "NAME",
            "PHASE",
            "ROUND",
            "TIERS",
            "READY",
            "BEST",
            "ACCURACY",
            "ACCURACY",
            "AGE",
        ]
        by_name = {row.split()[0]: row.split() for row in rows}
        assert set(by_name) == {"quickstart", "cifar100-resnet56", "fashion-mnist-federated"}
        assert by_name["quickstart"][1:3] == ["Running", "2/2"]
        # cifar100 references DeviceTiers whose nodes do not exist here: Pending, and why.
        assert by_name["cifar100-resnet56"][1] == "Pending"
        reason = await kubectl(
            cluster,
            "get",
            "ftj",
            "cifar100-resnet56",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='TiersAvailable')].reason}",
        )
        assert reason == "NoMatchingNodes"

        # Re-applying the same files changes nothing and creates nothing twice.
        again = await kubectl(
            cluster, "apply", "--validate=false", "-f", "examples/quickstart.yaml"
        )
        assert "flextrainjob.flextrain.dev/quickstart unchanged" in again, again
        assert (
            len([j for j in cluster.list(JOBS) if j["metadata"]["name"].startswith("quickstart-")])
            == 2
        )

        tiers = await kubectl(cluster, "get", "dt")
        assert tiers.splitlines()[0].split() == ["NAME", "ARCH", "ACCELERATOR", "NODES", "AGE"]
