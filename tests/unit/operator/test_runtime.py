"""The runtime's pure parts: reading DeviceTiers from the watch."""

from __future__ import annotations

from flextrain.api.devicetier import DeviceTier
from flextrain.operator.runtime import InvalidDeviceTier, backoff_delay, parse_device_tier
from tests.factories import make_tier


def test_a_valid_device_tier_reads_with_its_status() -> None:
    body = make_tier("cpu")
    body["status"] = {"readyNodes": 2}
    tier = parse_device_tier(body)
    assert isinstance(tier, DeviceTier)
    assert tier.status is not None and tier.status.ready_nodes == 2


def test_an_invalid_device_tier_says_which_field_and_why() -> None:
    body = make_tier(
        "gpu", tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "value": "true"}]
    )
    body["metadata"].update(uid="u", resourceVersion="7")  # what the API server adds
    tier = parse_device_tier(body)
    assert isinstance(tier, InvalidDeviceTier) and tier.name == "gpu"
    [problem] = tier.problems
    assert problem.startswith("spec.tolerations[0].value: value must be empty when operator")
    assert "(got 'true')" in problem


def test_every_problem_is_named() -> None:
    body = make_tier("cpu", architecture="riscv64", nodeSelector={"pool": "two words"})
    tier = parse_device_tier(body)
    assert isinstance(tier, InvalidDeviceTier)
    assert [p.split(":")[0] for p in tier.problems] == ["spec.nodeSelector.pool", "spec.architecture"]


def test_one_backoff_doubles_from_a_second_to_a_minute() -> None:
    assert [backoff_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(1000) == 60


def test_an_arm64_gpu_tier_is_invalid_and_a_job_on_it_says_why() -> None:
    """A tier the CRD would refuse today but that is stored (created before the rule, or on
    a server without CEL): the operator reads it as invalid and a job on it waits, saying
    which field, why, and what to do; no trainer is created for it."""
    from tests.unit.operator.test_reconcile import cond, run

    body = make_tier("cpu", architecture="arm64", accelerator={"type": "nvidia.com/gpu", "count": 1})
    tier = parse_device_tier(body)
    assert isinstance(tier, InvalidDeviceTier)
    [problem] = tier.problems
    assert problem.startswith("spec.accelerator.type: accelerator.type nvidia.com/gpu is not "
                              "supported with architecture arm64")
    assert "amd64 GPU node pool" in problem and "accelerator.type none" in problem

    plan = run(tiers={}, invalid_tiers={"cpu": tier.message})
    assert cond(plan, "TiersAvailable") == ("False", "DeviceTierInvalid")
    assert plan.create == [] and plan.status.phase == "Pending"
    message = next(c.message for c in plan.status.conditions or [] if c.type == "TiersAvailable")
    assert "spec.accelerator.type" in message and "architecture arm64" in message


def test_an_arm64_cpu_tier_and_an_amd64_gpu_tier_are_valid() -> None:
    arm = parse_device_tier(make_tier("edge", architecture="arm64", accelerator={"type": "none"}))
    gpu = parse_device_tier(make_tier("gpu", accelerator={"type": "nvidia.com/gpu", "count": 1}))
    assert isinstance(arm, DeviceTier) and isinstance(gpu, DeviceTier)
