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
