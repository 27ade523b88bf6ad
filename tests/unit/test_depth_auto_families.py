"""`depth: auto` as the operator and `flextrain run` resolve it (flextrain.jobplan, torch
free) sees the job's model family and its options."""

from __future__ import annotations

from typing import Any

import pytest

from flextrain.api.devicetier import DeviceTier
from flextrain.api.flextrainjob import FlexTrainJob
from flextrain.core.families import profile
from flextrain.core.policy import training_memory
from flextrain.jobplan import PlanError, plan_job
from tests.factories import make_job, make_tier


def _plan(model: dict[str, Any], capacity: dict[str, Any]) -> dict[str, int]:
    body = make_job(model=model)
    body["spec"]["tiers"] = [
        {"name": "strong", "deviceTierRef": "big", "replicas": 1, "depth": 1},
        {"name": "weak", "deviceTierRef": "small", "replicas": 1, "depth": "auto"},
    ]
    tiers = {
        "big": DeviceTier.model_validate(make_tier("big")),
        "small": DeviceTier.model_validate(make_tier("small", capacity=capacity)),
    }
    return plan_job(FlexTrainJob.model_validate(body), tiers).depths


def test_a_vit_tier_gets_the_deepest_prefix_within_its_parameters() -> None:
    vit = {"family": "vit", "layers": 6}
    assert _plan(vit, {"parameters": 70_000})["weak"] == 2  # depth 2 holds 69,066
    assert _plan(vit, {"parameters": 69_065})["weak"] == 1


def test_the_vit_shape_changes_the_depth_that_fits() -> None:
    narrow = {"family": "vit", "layers": 6, "vit": {"embedDim": 32, "heads": 4}}
    depth = _plan(narrow, {"parameters": 70_000})["weak"]
    p = profile("vit", 6, 10, 1, 8, {"embed_dim": 32, "heads": 4})
    assert depth == max(k for k in range(1, 7) if p.parameters(k) <= 70_000) == 6


def test_a_vit_memory_budget_is_estimated_for_its_blocks() -> None:
    arch = profile("vit", 6, 10, 1, 8)
    need = [training_memory(arch, k, batch_size=32).total for k in range(1, 7)]  # the job's batch
    assert _plan({"family": "vit", "layers": 6}, {"memory": str(need[2])})["weak"] == 3
    assert _plan({"family": "vit", "layers": 6}, {"memory": str(need[3] - 1)})["weak"] == 3
    with pytest.raises(PlanError, match="6-block vit"):
        _plan({"family": "vit", "layers": 6}, {"memory": str(need[0] - 1)})


def test_resnet_depths_are_unchanged() -> None:
    assert _plan({"family": "resnet", "layers": 20}, {"parameters": 25_000})["weak"] == 3
