"""Who trains what: federated FlexTrain and the paper's two baselines as device plans.

From FlexTrain (arXiv 2310.20457, Sec. 5.2, Table 4), with tiers ``[(depth, devices)]``:

* ``flextrain``: one global model; every device trains its tier's depth k_j and is
  evaluated there; all but the weakest tier distil (Algorithm 2).
* ``fedsmall`` (FedSmall): FedAvg of the model the weakest device can hold, on all
  devices: every device trains and is evaluated at the minimum depth; no distillation.
* ``fedclass`` (FedClass): one FedAvg model per tier, trained only by that tier's
  devices and evaluated at that tier's depth; no distillation.

A plan assigns each device a *group* (devices of one group share one global state and
one merge) and a training/evaluation depth. The simulator (and a real deployment)
executes plans; it does not special-case methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

#: Names accepted by :func:`plan_devices`.
METHODS: Final[tuple[str, ...]] = ("flextrain", "fedsmall", "fedclass")

#: ``role(tier_index, tier_depth) -> (group, train_depth, eval_depth, distill)``.
_RoleFn = Callable[[int, int], tuple[int, int, int, bool]]


@dataclass(frozen=True)
class DevicePlan:
    """One device's role in a federated run."""

    #: Device index, 0..J-1, in tier order (tier 0's devices first).
    device: int
    #: Index of the device's tier in the ``tiers`` list.
    tier: int
    #: The tier's depth k_j (what its budget allows).
    tier_depth: int
    #: Which global state the device trains (0 unless ``fedclass``: the tier index).
    group: int
    #: Depth the device trains and uploads each round.
    train_depth: int
    #: Depth at which the device's model is evaluated.
    eval_depth: int
    #: Whether the device adds the auto-distillation term.
    distill: bool


def validate_tiers(tiers: Sequence[tuple[int, int]]) -> None:
    """Raise ValueError unless tiers are ``(depth >= 1, devices >= 1)`` with distinct depths."""
    if not tiers:
        raise ValueError("at least one tier is needed")
    depths = [d for d, _ in tiers]
    if len(set(depths)) != len(depths):
        raise ValueError(f"tier depths must be distinct, got {depths}")
    for depth, count in tiers:
        if depth < 1 or count < 1:
            raise ValueError(f"tier (depth={depth}, devices={count}) needs both >= 1")


def plan_flextrain(tiers: Sequence[tuple[int, int]]) -> list[DevicePlan]:
    """Federated FlexTrain: each device at its tier depth; the weakest tier does not distil."""
    validate_tiers(tiers)
    weakest = min(d for d, _ in tiers)
    return _expand(tiers, lambda t, d: (0, d, d, d > weakest))


def plan_fedsmall(tiers: Sequence[tuple[int, int]]) -> list[DevicePlan]:
    """FedSmall: every device trains and is evaluated at the weakest tier's depth."""
    validate_tiers(tiers)
    weakest = min(d for d, _ in tiers)
    return _expand(tiers, lambda t, d: (0, weakest, weakest, False))


def plan_fedclass(tiers: Sequence[tuple[int, int]]) -> list[DevicePlan]:
    """FedClass: one model (group) per tier, trained and evaluated at that tier's depth."""
    validate_tiers(tiers)
    return _expand(tiers, lambda t, d: (t, d, d, False))


def plan_devices(method: str, tiers: Sequence[tuple[int, int]]) -> list[DevicePlan]:
    """The device plan of ``method`` (``"flextrain"``, ``"fedsmall"``, ``"fedclass"``)."""
    if method == "flextrain":
        return plan_flextrain(tiers)
    if method == "fedsmall":
        return plan_fedsmall(tiers)
    if method == "fedclass":
        return plan_fedclass(tiers)
    raise ValueError(f"unknown federated method {method!r}; known: {list(METHODS)}")


def _expand(
    tiers: Sequence[tuple[int, int]],
    role: _RoleFn,
) -> list[DevicePlan]:
    plans: list[DevicePlan] = []
    for t, (depth, count) in enumerate(tiers):
        group, train_depth, eval_depth, distill = role(t, depth)
        for _ in range(count):
            plans.append(
                DevicePlan(
                    device=len(plans),
                    tier=t,
                    tier_depth=depth,
                    group=group,
                    train_depth=train_depth,
                    eval_depth=eval_depth,
                    distill=distill,
                )
            )
    return plans
