"""Which nodes a DeviceTier matches, and the DeviceTier's status."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flextrain.operator.tiers import device_tier_status, format_cpu, format_memory, matches
from tests.unit.operator.conftest import NOW, a_node, tier

TAINT = [{"key": "flextrain.dev/edge", "value": "true", "effect": "NoSchedule"}]


@pytest.mark.parametrize(
    ("tier_spec", "node_kw", "expected"),
    [
        ({}, {}, True),
        ({}, {"pool": "gpu"}, False),
        ({"architecture": "arm64"}, {}, False),
        ({"architecture": "arm64"}, {"arch": "arm64"}, True),
        ({}, {"taints": TAINT}, False),
        (
            {
                "tolerations": [
                    {
                        "key": "flextrain.dev/edge",
                        "operator": "Equal",
                        "value": "true",
                        "effect": "NoSchedule",
                    }
                ]
            },
            {"taints": TAINT},
            True,
        ),
        (
            {"tolerations": [{"key": "flextrain.dev/edge", "operator": "Equal", "value": "false"}]},
            {"taints": TAINT},
            False,
        ),
        ({"tolerations": [{"operator": "Exists"}]}, {"taints": TAINT}, True),
        ({}, {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}, True),
        ({}, {"cordoned": True}, False),
    ],
    ids=[
        "selector",
        "other pool",
        "arch differs",
        "arch matches",
        "untolerated taint",
        "tolerated taint",
        "wrong value",
        "tolerate everything",
        "soft taint",
        "cordoned",
    ],
)
def test_matching(tier_spec: dict[str, Any], node_kw: dict[str, Any], expected: bool) -> None:
    assert matches(tier("cpu", **tier_spec), a_node(**node_kw)) is expected


def test_status_sums_ready_matching_nodes() -> None:
    nodes = [
        a_node("a", cpu="4", memory="8Gi", **{"nvidia.com/gpu": "2"}),
        a_node("b", cpu="3500m", memory="512Mi"),
        a_node("c", ready=False, cpu="64", memory="1Ti"),
        a_node("d", pool="other", cpu="64"),
    ]
    status = device_tier_status(tier("cpu"), nodes, NOW)
    assert (status.nodes, status.ready_nodes) == (3, 2)
    assert (status.allocatable_cpu, status.allocatable_memory, status.allocatable_gpus) == (
        "7500m",
        "8704Mi",
        2,
    )
    [c] = status.conditions or []
    assert (c.type, c.status, c.reason) == ("NodesAvailable", "True", "NodesMatched")
    assert "a, b" in c.message


def test_no_ready_node_is_a_condition_and_transitions_keep_their_time() -> None:
    t = tier("cpu")
    down = device_tier_status(t, [a_node("a", ready=False)], NOW)
    [c] = down.conditions or []
    assert (c.status, c.reason) == ("False", "NoMatchingNodes")
    assert "1 match but are not Ready" in c.message
    t = t.model_copy(update={"status": down})
    still = device_tier_status(t, [a_node("a", ready=False)], NOW + timedelta(minutes=1))
    assert (still.conditions or [])[0].last_transition_time == NOW
    up = device_tier_status(t, [a_node("a")], NOW + timedelta(minutes=2))
    assert (up.conditions or [])[0].last_transition_time == NOW + timedelta(minutes=2)


@pytest.mark.parametrize(("value", "cpu"), [("12", "12"), ("0.5", "500m"), ("3.25", "3250m")])
def test_format_cpu(value: str, cpu: str) -> None:
    from decimal import Decimal

    assert format_cpu(Decimal(value)) == cpu


@pytest.mark.parametrize(
    ("value", "memory"), [(2**30 * 64, "64Gi"), (2**20 * 1536, "1536Mi"), (1000, "1000")]
)
def test_format_memory(value: int, memory: str) -> None:
    from decimal import Decimal

    assert format_memory(Decimal(value)) == memory
