"""Which nodes a DeviceTier's trainers can run on, and the DeviceTier's status.

Pure functions over plain node dicts (as the API returns them): a node matches a tier
when it carries every label of the tier's nodeSelector and its architecture label, is
not cordoned, and the tier tolerates every NoSchedule/NoExecute taint on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from flextrain.api.conditions import ConditionStatus, TierConditionType, TierReason
from flextrain.api.devicetier import GPU_RESOURCE, DeviceTier, DeviceTierStatus, Toleration
from flextrain.api.quantity import parse_quantity
from flextrain.operator.status import set_condition

ARCH_LABEL = "kubernetes.io/arch"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeInfo:
    """What the operator keeps of a Node (a few hundred bytes, not the whole object)."""

    name: str
    labels: Mapping[str, str]
    ready: bool
    cordoned: bool
    taints: tuple[Taint, ...]
    cpu: Decimal
    memory: Decimal
    gpus: int


def node_info(body: Mapping[str, Any]) -> NodeInfo:
    """The parts of a Node object the operator uses."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    allocatable = status.get("allocatable") or {}

    def quantity(name: str) -> Decimal:
        try:
            return parse_quantity(allocatable.get(name, "0"))
        except ValueError:
            return Decimal(0)

    return NodeInfo(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        ready=ready,
        cordoned=bool(spec.get("unschedulable")),
        taints=tuple(
            Taint(str(t.get("key", "")), str(t.get("value", "")), str(t.get("effect", "")))
            for t in spec.get("taints") or []
        ),
        cpu=quantity("cpu"),
        memory=quantity("memory"),
        gpus=int(quantity(GPU_RESOURCE)),
    )


def node_selector(tier: DeviceTier) -> dict[str, str]:
    """The tier's nodeSelector plus its architecture label."""
    return {**tier.spec.node_selector, ARCH_LABEL: tier.spec.architecture}


def tolerates(tolerations: Sequence[Toleration], taint: Taint) -> bool:
    for tol in tolerations:
        if tol.effect and tol.effect != taint.effect:
            continue
        if tol.operator == "Exists":
            if not tol.key or tol.key == taint.key:
                return True
        elif tol.key == taint.key and (tol.value or "") == taint.value:
            return True
    return False


def matches(tier: DeviceTier, node: NodeInfo) -> bool:
    """True when the tier's trainer pods may be scheduled on the node (readiness aside)."""
    selector = node_selector(tier)
    if any(node.labels.get(k) != v for k, v in selector.items()):
        return False
    if node.cordoned:
        return False
    return all(
        tolerates(tier.spec.tolerations, taint)
        for taint in node.taints
        if taint.effect in ("NoSchedule", "NoExecute")
    )


def matching_nodes(tier: DeviceTier, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    return [n for n in nodes if matches(tier, n)]


def ready_matching(tier: DeviceTier, nodes: Iterable[NodeInfo]) -> int:
    return sum(1 for n in matching_nodes(tier, nodes) if n.ready)


def format_cpu(cores: Decimal) -> str:
    """Cores as a quantity: whole cores plain ("12"), else millicores ("3500m")."""
    if cores == cores.to_integral_value():
        return str(int(cores))
    return f"{int(cores * 1000)}m"


def format_memory(size: Decimal) -> str:
    """Bytes as the largest exact binary quantity ("64Gi", "1536Mi")."""
    whole = int(size)
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if whole and whole % factor == 0:
            return f"{whole // factor}{suffix}"
    return str(whole)


def device_tier_status(
    tier: DeviceTier, nodes: Iterable[NodeInfo], now: datetime
) -> DeviceTierStatus:
    """The DeviceTier's status from the current nodes; condition timestamps are kept from
    the previous status when nothing changed."""
    matched = matching_nodes(tier, nodes)
    ready = [n for n in matched if n.ready]
    previous = tier.status.conditions if tier.status and tier.status.conditions else []
    if ready:
        condition = (
            ConditionStatus.TRUE,
            TierReason.NODES_MATCHED,
            f"{len(ready)} Ready node(s) match: {', '.join(sorted(n.name for n in ready)[:5])}"
            + (" ..." if len(ready) > 5 else ""),
        )
    else:
        not_ready = f" ({len(matched)} match but are not Ready)" if matched else ""
        condition = (
            ConditionStatus.FALSE,
            TierReason.NO_MATCHING_NODES,
            f"no Ready node matches nodeSelector {node_selector(tier)}"
            + (
                f" with tolerations for its taints{not_ready}"
                if tier.spec.tolerations
                else not_ready
            )
            + "; trainers of jobs on this tier wait until one does",
        )
    conditions = set_condition(
        previous,
        TierConditionType.NODES_AVAILABLE,
        *condition,
        now=now,
        generation=_generation(tier),
    )
    return DeviceTierStatus(
        nodes=len(matched),
        ready_nodes=len(ready),
        allocatable_cpu=format_cpu(sum((n.cpu for n in ready), Decimal(0))),
        allocatable_memory=format_memory(sum((n.memory for n in ready), Decimal(0))),
        allocatable_gpus=sum(n.gpus for n in ready),
        observed_generation=_generation(tier),
        conditions=conditions,
    )


def _generation(tier: DeviceTier) -> int | None:
    value = (tier.metadata.model_extra or {}).get("generation")
    return int(value) if isinstance(value, int) else None
