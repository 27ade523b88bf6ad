"""The aggregator's state survives its pod: the operator gives each job a checkpoint
claim, and an aggregator pod deleted mid-run comes back (the real Deployment controller
and scheduler) and resumes from its last completed round; the final model and the
per-tier sub-models stay on the claim after the job succeeded (status.model).

Exec mode: the node agent runs the real aggregator and trainers as processes, and plays
the local-path provisioner that gives the claim its volume (node_agent.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from kubernetes import client

from flextrain.core.export import load_submodel
from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.node_agent import MODE_LABEL, NodeAgent
from tests.cluster.test_operator import Jobs
from tests.tools import REPO

ROUNDS = 10


def _quickstart(rounds: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "quickstart.yaml").read_text()) if d]
    tiers = [d for d in docs if d["kind"] == "DeviceTier"]
    [job] = [d for d in docs if d["kind"] == "FlexTrainJob"]
    job["spec"]["training"]["rounds"] = rounds
    return tiers, job


@pytest.mark.timeout(600)
def test_a_deleted_aggregator_resumes_from_its_claim_and_the_model_stays(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.core.patch_namespace(namespace, {"metadata": {"labels": {MODE_LABEL: "exec"}}})
    tiers, body = _quickstart(ROUNDS)
    for tier in tiers:
        try:
            jobs.custom.create_cluster_custom_object("flextrain.dev", "v1alpha1", "devicetiers", tier)
        except client.ApiException as exc:
            assert exc.status == 409  # the quickstart test made them
    jobs.create({**body, "metadata": {**body["metadata"], "namespace": namespace}})

    def rounds_done() -> int:
        return int(jobs.get("quickstart").get("status", {}).get("round") or 0)

    wait_for(lambda: rounds_done() >= 3, timeout=300, interval=0.5, what="three completed rounds")
    claim = jobs.core.read_namespaced_persistent_volume_claim("quickstart-checkpoints", namespace)
    assert claim.status.phase == "Bound" and claim.metadata.owner_references[0].name == "quickstart"
    [pod] = jobs.core.list_namespaced_pod(namespace, label_selector="flextrain.dev/component=aggregator").items
    done_before = rounds_done()
    deleted = time.monotonic()
    jobs.core.delete_namespaced_pod(pod.metadata.name, namespace)

    def replacement() -> client.V1Pod | None:
        pods = jobs.core.list_namespaced_pod(namespace, label_selector="flextrain.dev/component=aggregator").items
        ready = [
            p for p in pods
            if p.metadata.uid != pod.metadata.uid and p.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return ready[0] if ready else None

    new = wait_for(replacement, timeout=120, interval=0.2, what="a new aggregator pod, Ready")
    serving = time.monotonic() - deleted
    wait_for(lambda: rounds_done() > done_before, timeout=120, interval=0.2, what="the next round after the restart")
    training = time.monotonic() - deleted
    print(f"\naggregator pod deleted after round {done_before}: a new one serving in {serving:.1f} s, "
          f"the next round completed {training:.1f} s after the deletion")

    log = (agent.workdir / "pods" / f"{namespace}_{new.metadata.name}" / "stdout.log").read_text()
    assert "from a fresh model" not in log, log[-2000:]
    resumed = [line for line in log.splitlines() if "resumed job quickstart after round" in line]
    assert resumed, log[-2000:]
    after = int(resumed[0].split("after round")[1].split()[0])
    assert after >= done_before, (after, done_before)  # no completed round lost

    def succeeded() -> dict[str, Any] | None:
        status = jobs.get("quickstart").get("status", {})
        assert status.get("phase") != "Failed", status.get("conditions")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(succeeded, timeout=300, interval=1, what="the job to succeed")
    assert status["round"] == ROUNDS
    assert status["model"] == {
        "claim": "quickstart-checkpoints",
        "checkpoint": f"pvc://quickstart-checkpoints/round-{ROUNDS:06d}.pt",
        "exports": "pvc://quickstart-checkpoints/models/",
    }
    # The claim outlives the aggregator (scaled to 0 after the grace): the model is there.
    volume = agent.workdir / "claims" / namespace / "quickstart-checkpoints"
    assert (volume / f"round-{ROUNDS:06d}.pt").exists()
    for tier, depth in (("strong", 9), ("weak", 3)):
        _model, meta = load_submodel(volume / "models" / f"{tier}.safetensors")
        assert (meta["tier"], meta["depth"], meta["round"]) == (tier, depth, ROUNDS)
