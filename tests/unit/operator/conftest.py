"""Builders for the operator's pure tests: typed jobs, tiers, nodes, observations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flextrain.api.devicetier import DeviceTier
from flextrain.api.flextrainjob import FlexTrainJob
from flextrain.operator.tiers import NodeInfo, node_info
from tests.factories import make_job, make_tier

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
UID = "6d1c2f5e-0000-4000-8000-000000000001"


def job(name: str = "job", **spec: Any) -> FlexTrainJob:
    body = make_job(name, **spec)
    body["metadata"].update(uid=UID, generation=1)
    return FlexTrainJob.model_validate(body)


def tier(name: str = "cpu", **spec: Any) -> DeviceTier:
    return DeviceTier.model_validate(make_tier(name, **spec))


def a_node(
    name: str = "n1",
    *,
    pool: str = "cpu",
    ready: bool = True,
    arch: str = "amd64",
    taints: list[dict[str, str]] | None = None,
    cordoned: bool = False,
    **allocatable: str,
) -> NodeInfo:
    return node_info(
        {
            "metadata": {
                "name": name,
                "labels": {"flextrain.dev/pool": pool, "kubernetes.io/arch": arch},
            },
            "spec": {"taints": taints or [], "unschedulable": cordoned},
            "status": {
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "allocatable": allocatable or {"cpu": "4", "memory": "8Gi"},
            },
        }
    )
