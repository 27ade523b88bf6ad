"""Server-side merge strategies for federated FlexTrain (arXiv 2310.20457, Algorithm 2).

``"pad"`` (the paper's, default), ``"holder-weighted"`` (HeteroFL/DepthFL style) and
``"robust"`` (per-layer norm clipping and a coordinate-wise trimmed mean or median over
each tensor's holders). Select one by name with :func:`get_strategy`, or as a job's
``spec.aggregation`` configures it with :func:`strategy_for`; merge in a streaming
fashion with ``strategy.begin(global_state, expected_clients)`` / ``acc.add`` /
``acc.finish``, or all at once with :func:`merge` (a convenience built on the same
accumulator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from torch import Tensor

from flextrain.core.merge.base import (
    Accumulator,
    AccumulatorClosed,
    MergeError,
    MergeStrategy,
    NonFiniteError,
    is_finite,
)
from flextrain.core.merge.holder_weighted import HolderWeightedMerge
from flextrain.core.merge.pad import PadMerge
from flextrain.core.merge.robust import ROBUST_METHODS, RobustMerge, RobustMergeConfigError

if TYPE_CHECKING:
    from flextrain.api.flextrainjob import AggregationSpec

#: The paper's strategy, used when a spec names none.
DEFAULT_STRATEGY: Final[str] = "pad"

_REGISTRY: Final[dict[str, type[MergeStrategy]]] = {
    PadMerge.name: PadMerge,
    HolderWeightedMerge.name: HolderWeightedMerge,
    RobustMerge.name: RobustMerge,
}

#: Names accepted by :func:`get_strategy`.
STRATEGIES: Final[tuple[str, ...]] = tuple(_REGISTRY)


class UnknownStrategy(ValueError):
    """No merge strategy is registered under the requested name."""


def get_strategy(name: str, **options: Any) -> MergeStrategy:
    """A new instance of the strategy registered as ``name`` (``"pad"``,
    ``"holder-weighted"``, ``"robust"``), built with ``options`` (keyword arguments of
    its class: only :class:`RobustMerge` takes any).

    Raises:
        UnknownStrategy: no strategy is registered as ``name``.
        TypeError: an option the strategy does not take.
        RobustMergeConfigError: (a ValueError) a robust option outside its limits.
    """
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownStrategy(
            f"unknown merge strategy {name!r}; known: {list(STRATEGIES)}"
        ) from None
    return cls(**options)


def strategy_for(aggregation: AggregationSpec) -> MergeStrategy:
    """The strategy a job's ``spec.aggregation`` selects, with its options
    (``spec.aggregation.robust`` for ``"robust"``; its defaults when that is unset)."""
    robust = aggregation.robust
    if aggregation.strategy != RobustMerge.name or robust is None:
        return get_strategy(aggregation.strategy)
    return RobustMerge(
        method=robust.method,
        trim_fraction=robust.trim_fraction,
        clip_multiple=robust.clip_multiple,
    )


def merge(
    strategy_name: str,
    global_state: Mapping[str, Tensor],
    updates: Sequence[tuple[Mapping[str, Tensor], int]],
) -> dict[str, Tensor]:
    """Merge ``(tensors, num_examples)`` updates into a new global state in one call.

    Pure: ``global_state`` and the updates are not mutated. Built on the streaming
    accumulator (this convenience holds all updates; servers should stream instead).

    Raises:
        UnknownStrategy: no strategy named ``strategy_name``.
        MergeError: an update was rejected.
    """
    acc = get_strategy(strategy_name).begin(global_state, expected_clients=len(updates))
    for tensors, num_examples in updates:
        acc.add(tensors, num_examples)
    return acc.finish()


__all__ = [
    "DEFAULT_STRATEGY",
    "ROBUST_METHODS",
    "STRATEGIES",
    "Accumulator",
    "AccumulatorClosed",
    "HolderWeightedMerge",
    "MergeError",
    "MergeStrategy",
    "NonFiniteError",
    "PadMerge",
    "RobustMerge",
    "RobustMergeConfigError",
    "UnknownStrategy",
    "get_strategy",
    "is_finite",
    "merge",
    "strategy_for",
]
