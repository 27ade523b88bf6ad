"""Turn a FlexTrainJob and its DeviceTiers into a concrete plan: the depth of every tier
(`auto` resolved with the core depth policy), shard numbering and the weakest depth.

Torch-free: the operator, the local runner and the aggregator all plan with this one
function, so they always agree on depths and shards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flextrain.api.catalog import DATASETS
from flextrain.api.devicetier import DeviceTier
from flextrain.api.flextrainjob import DataSource, FlexTrainJob
from flextrain.api.quantity import parse_quantity
from flextrain.core.policy import BudgetTooSmall, deepest_depth_for_budget


class PlanError(ValueError):
    """The job cannot be planned; the message names the tier and what is missing."""

    def __init__(self, tier: str, message: str) -> None:
        super().__init__(message)
        self.tier = tier


@dataclass(frozen=True)
class TierPlan:
    """One tier of a job, with its depth resolved."""

    name: str
    device_tier: str
    depth: int
    depth_source: Literal["fixed", "auto"]
    replicas: int
    #: Shard index of the tier's replica 0; replica i trains shard `shard_offset + i`.
    shard_offset: int
    data_source: DataSource | None


@dataclass(frozen=True)
class JobPlan:
    """A FlexTrainJob with every tier's depth known."""

    job: FlexTrainJob
    tiers: tuple[TierPlan, ...]

    @property
    def name(self) -> str:
        return self.job.metadata.name

    @property
    def num_shards(self) -> int:
        return sum(t.replicas for t in self.tiers)

    @property
    def weakest_depth(self) -> int:
        return min(t.depth for t in self.tiers)

    @property
    def depths(self) -> dict[str, int]:
        return {t.name: t.depth for t in self.tiers}

    def tier(self, name: str) -> TierPlan:
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(f"job {self.name} has no tier {name!r}; tiers: {[t.name for t in self.tiers]}")

    def to_json(self) -> str:
        """What the aggregator is started with: the job manifest and resolved depths."""
        return json.dumps({"job": self.job.to_wire(), "depths": self.depths}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobPlan:
        data: dict[str, Any] = json.loads(text)
        return plan_with_depths(FlexTrainJob.model_validate(data["job"]), data["depths"])


def resolve_depth(job: FlexTrainJob, tier_name: str, device_tier: DeviceTier) -> int:
    """The deepest prefix of the job's model that fits the DeviceTier's capacity."""
    capacity = device_tier.spec.capacity
    if capacity is None:
        raise PlanError(
            tier_name,
            f"tier {tier_name!r} uses depth auto but DeviceTier {device_tier.metadata.name!r} "
            "has no spec.capacity",
        )
    info = DATASETS[job.spec.dataset.name]
    try:
        return deepest_depth_for_budget(
            job.spec.model.family,
            job.spec.model.layers,
            job.num_classes,
            info.channels,
            info.image_size,
            max_parameters=capacity.parameters,
            memory_bytes=int(parse_quantity(capacity.memory)) if capacity.memory else None,
            batch_size=job.spec.training.batch_size,
            options=job.spec.model.options,
        )
    except BudgetTooSmall as exc:
        raise PlanError(
            tier_name, f"tier {tier_name!r} (DeviceTier {device_tier.metadata.name!r}): {exc}"
        ) from exc


def plan_job(job: FlexTrainJob, device_tiers: Mapping[str, DeviceTier]) -> JobPlan:
    """Resolve every tier's depth; raises PlanError naming the first tier that cannot be."""
    depths: dict[str, int] = {}
    for tier in job.spec.tiers:
        if isinstance(tier.depth, int):
            depths[tier.name] = tier.depth
            continue
        device_tier = device_tiers.get(tier.device_tier_ref)
        if device_tier is None:
            raise PlanError(tier.name, f"DeviceTier {tier.device_tier_ref!r} not found")
        depths[tier.name] = resolve_depth(job, tier.name, device_tier)
    return plan_with_depths(job, depths)


def plan_with_depths(job: FlexTrainJob, depths: Mapping[str, int]) -> JobPlan:
    """A plan from already resolved depths (e.g. read back from the aggregator's config)."""
    tiers = []
    offset = 0
    blocks = job.spec.model.num_blocks
    for tier in job.spec.tiers:
        if tier.name not in depths:
            raise PlanError(tier.name, f"no depth given for tier {tier.name!r}")
        depth = int(depths[tier.name])
        if not 1 <= depth <= blocks:
            raise PlanError(tier.name, f"tier {tier.name!r}: depth {depth} is not in 1..{blocks}")
        if isinstance(tier.depth, int) and tier.depth != depth:
            raise PlanError(tier.name, f"tier {tier.name!r}: depth {depth} != spec depth {tier.depth}")
        tiers.append(
            TierPlan(
                name=tier.name,
                device_tier=tier.device_tier_ref,
                depth=depth,
                depth_source="fixed" if isinstance(tier.depth, int) else "auto",
                replicas=tier.replicas,
                shard_offset=offset,
                data_source=tier.data_source or job.spec.dataset.source,
            )
        )
        offset += tier.replicas
    return JobPlan(job, tuple(tiers))
