"""The process environment contract: what the operator's pods and `flextrain run` write
is what the trainer and the aggregator read, field for field."""

from __future__ import annotations

import argparse
import base64
import re
from pathlib import Path
from typing import Any

import pytest

from flextrain.aggregator import main as aggregator_main
from flextrain.api.flextrainjob import RESERVED_ENV
from flextrain.contract import env as contract
from flextrain.contract.credentials import (
    CredentialVerifier,
    ReplicaIdentity,
    replica_credential,
    tier_key,
)
from flextrain.contract.env import AggregatorEnv, EnvError, TrainerEnv
from flextrain.jobplan import JobPlan, plan_job
from flextrain.operator import builders, names
from flextrain.operator.config import OperatorSettings
from tests.tools import REPO
from tests.unit.operator.conftest import UID, job, tier

SETTINGS = OperatorSettings(image="registry.example/flextrain:1", metrics_port=9090)
OWNER = names.owner_reference("FlexTrainJob", "job", UID)
TOKEN = "t0ken"


def _container_env(obj: dict[str, Any], completion_index: int, plan: JobPlan) -> dict[str, str]:
    """A container's environment as the kubelet resolves it: a secretKeyRef from the
    job's Secret as the operator builds it, and JOB_COMPLETION_INDEX as an Indexed Job's
    pod has it."""
    [container] = obj["spec"]["template"]["spec"]["containers"]
    secret = builders.build_secret(plan.job, TOKEN, OWNER)
    out = {contract.COMPLETION_INDEX: str(completion_index)}
    for entry in container["env"]:
        if "value" in entry:
            out[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] == names.secret_name("job")
            out[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return out


def _plan(**spec: Any) -> tuple[JobPlan, dict[str, Any]]:
    tiers = {
        "cpu": tier("cpu", resources={"requests": {"cpu": "1"}, "limits": {"cpu": "3"}}),
        "gpu": tier("gpu", accelerator={"type": "nvidia.com/gpu", "count": 1}),
    }
    j = job(
        dataset={
            "name": "fashion-mnist",
            "source": {"path": "/srv/fashion"},
            "partition": {"scheme": "dirichlet", "alpha": 0.5},
        },
        tiers=[
            {"name": "deep", "deviceTierRef": "gpu", "replicas": 1, "depth": 9},
            {"name": "shallow", "deviceTierRef": "cpu", "replicas": 3, "depth": 3},
        ],
        **spec,
    )
    return plan_job(j, tiers), tiers


def test_the_trainer_reads_what_the_operator_writes() -> None:
    plan, tiers = _plan()
    for tier_plan in plan.tiers:
        obj = builders.build_tier_job(plan, tier_plan, tiers[tier_plan.device_tier], OWNER, SETTINGS)
        env = _container_env(obj, completion_index=2, plan=plan)
        assert {k for k in env if k.startswith(contract.PREFIX)} <= set(contract.TRAINER_VARIABLES)
        got = TrainerEnv.from_env(env)
        gpu = tier_plan.device_tier == "gpu"
        assert got == TrainerEnv(
            aggregator=SETTINGS.address_of("default", "job", names.aggregator_name("job")),
            tier_key=tier_key(TOKEN, "job", tier_plan.name),
            job="job",
            tier=tier_plan.name,
            depth=tier_plan.depth,
            replica_index=2,
            data_dir=got.data_dir,
            partition="dirichlet:0.5",
            device="cuda" if gpu else "cpu",
            threads=1 if gpu else 3,  # whole cores of the limit, else the request
            log_format="json",
        )
        assert got.data_dir is not None  # the dataset's mount
        # The credential this trainer makes is the one the aggregator accepts, for it only.
        verifier = CredentialVerifier(TOKEN, "job", [t.name for t in plan.tiers])
        identity = ReplicaIdentity(tier_plan.name, tier_plan.depth, 2)
        assert verifier.verify(replica_credential(got.tier_key, identity)) == identity


def test_the_aggregator_reads_what_the_operator_writes() -> None:
    plan, _ = _plan()
    obj = builders.build_aggregator_deployment(plan, OWNER, SETTINGS)
    env = _container_env(obj, completion_index=0, plan=plan)
    env.pop(contract.COMPLETION_INDEX)
    assert {k for k in env if k.startswith(contract.PREFIX)} <= set(contract.AGGREGATOR_VARIABLES)
    got = AggregatorEnv.from_env(env)
    assert got.token == TOKEN
    assert (got.port, got.metrics_port, got.device, got.log_format) == (
        SETTINGS.aggregator_port,
        9090,
        "cpu",
        "json",
    )
    assert got.plan is not None
    assert JobPlan.from_json(got.plan).tiers == plan.tiers
    assert got.checkpoint_dir is not None and got.data_dir is not None


def test_every_field_survives_the_round_trip() -> None:
    trainer = TrainerEnv(
        "agg:1", "tok", "j", "t", 4, 3, Path("/d"), "iid", "cuda:1", 2,
        Path("/ca"), Path("/cert"), Path("/key"), Path("/slots"), 5, "text",
    )
    assert TrainerEnv.from_env(trainer.to_env()) == trainer
    aggregator = AggregatorEnv(
        "{}", "tok", 0, 9091, Path("/ck"), Path("/d"), "cpu", 2, "text",
        Path("/c"), Path("/k"), Path("/ca"),
    )
    assert AggregatorEnv.from_env(aggregator.to_env()) == aggregator


def test_left_out_variables_are_not_written() -> None:
    env = TrainerEnv("a:1", "key", "j", "t", 1).to_env(leave_out=(contract.TIER_KEY,))
    assert contract.TIER_KEY not in env and env[contract.DEPTH] == "1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({contract.LOG_FORMAT: "xml"}, "FLEXTRAIN_LOG_FORMAT='xml': use json or text"),
        ({contract.TRAINING_SLOTS: "4"}, "must be DIR:N"),
        ({contract.TRAINING_SLOTS: "/s:0"}, "FLEXTRAIN_TRAINING_SLOTS=0 must be >= 1"),
        ({contract.DEVICE: "cuda:x"}, "use auto, cpu, cuda or cuda:N"),
        ({contract.THREADS: "-1"}, "FLEXTRAIN_THREADS=-1 must be >= 0"),
    ],
)
def test_a_bad_trainer_variable_is_named(change: dict[str, str], message: str) -> None:
    base = TrainerEnv("a:1", "tok", "j", "t", 1).to_env()
    with pytest.raises(EnvError, match=re.escape(message)):
        TrainerEnv.from_env({**base, **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({contract.PORT: "http"}, "FLEXTRAIN_PORT='http' is not an integer"),
        ({contract.PORT: "70000"}, "FLEXTRAIN_PORT=70000 is not a port"),
        ({contract.METRICS_PORT: "-1"}, "FLEXTRAIN_METRICS_PORT=-1 must be >= 0"),
    ],
)
def test_a_bad_aggregator_variable_is_named(change: dict[str, str], message: str) -> None:
    with pytest.raises(EnvError, match=re.escape(message)):
        AggregatorEnv.from_env(change)


def test_the_aggregator_refuses_a_bad_variable_with_the_permanent_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(contract.PORT, "http")
    parser = argparse.ArgumentParser()
    aggregator_main.add_arguments(parser)
    assert aggregator_main.run(parser.parse_args([])) == contract.EXIT_PERMANENT
    assert "FLEXTRAIN_PORT='http' is not an integer" in capsys.readouterr().err


def test_a_flag_wins_over_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.PORT, "7000")
    monkeypatch.setenv(contract.METRICS_PORT, "7001")
    parser = argparse.ArgumentParser()
    aggregator_main.add_arguments(parser)
    merged = aggregator_main._settings(parser.parse_args(["--port", "8000"]))
    assert (merged.port, merged.metrics_port) == (8000, 7001)


def test_the_api_reserves_what_the_operator_owns() -> None:
    assert RESERVED_ENV == contract.RESERVED


def test_the_permanent_exit_code_is_the_pod_failure_policy_s() -> None:
    plan, tiers = _plan()
    obj = builders.build_tier_job(plan, plan.tiers[0], tiers["gpu"], OWNER, SETTINGS)
    rules = obj["spec"]["podFailurePolicy"]["rules"]
    assert any(
        r["action"] == "FailIndex" and r["onExitCodes"]["values"] == [contract.EXIT_PERMANENT]
        for r in rules
        if "onExitCodes" in r
    )


@pytest.mark.parametrize("process", ["trainer", "aggregator"])
def test_the_docs_table_is_the_contract_s(process: str) -> None:
    text = (REPO / "docs" / "aggregator.md").read_text()
    block = re.search(rf"<!-- env:{process} -->\n(.*?)<!-- /env:{process} -->", text, re.S)
    assert block, f"docs/aggregator.md has no <!-- env:{process} --> table"
    assert block.group(1) == contract.markdown_table(process), (
        "docs/aggregator.md is stale: paste the output of `python -m flextrain.contract.env`"
    )
