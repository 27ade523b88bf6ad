"""Tier-balanced merge: every tier that holds a tensor has an equal say in it.

A research merge for the weak-tier question of federated FlexTrain (arXiv 2310.20457,
Algorithm 2), used by the reproduction benchmark; it is not in the strategy registry,
so a FlexTrainJob cannot select it. In the paper's pad merge (and in holder-weighted)
the tensors the weakest tier trains -- the stem, its blocks and the shared head -- are
averaged over every device, so a tier of 2 devices among 20 moves them by a tenth.
Here an update's *tier* is its depth (the number of ``blocks.{i}`` it carries); for a
tensor t held by the tiers T_t, tier tau's holders sent u_j after n_j examples::

    new_t = (1 / |T_t|) * sum_{tau in T_t} ( sum_{j in tau} n_j u_j / sum_{j in tau} n_j )

Tensors nobody sent keep their global value. Integer tensors: maximum over holders
(see :mod:`.base`). Memory: one running sum per (tier, tensor), O(tiers x model).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from flextrain.core.merge.base import Accumulator, MergeStrategy

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def update_depth(keys: Iterable[str]) -> int:
    """The depth of an update: one more than the largest ``blocks.{i}`` it carries (0
    when it carries no block)."""
    depths = [int(m.group(1)) + 1 for k in keys if (m := _BLOCK.match(k))]
    return max(depths, default=0)


class TierBalancedAccumulator(Accumulator):
    """Running sums per tier (update depth): sum of n_j * u_j and of n_j per tensor."""

    def __init__(self, global_state: Mapping[str, Tensor], expected_clients: int) -> None:
        super().__init__(global_state, expected_clients)
        #: depth -> key -> running sum of n_j * u_j (floating tensors).
        self._sums: dict[int, dict[str, Tensor]] = {}
        #: depth -> key -> sum of n_j.
        self._counts: dict[int, dict[str, int]] = {}
        #: key -> running maximum (integer tensors).
        self._max: dict[str, Tensor] = {}

    def weight(self, num_examples: int) -> float:
        return float(num_examples)

    def _fold(self, tensors: Mapping[str, Tensor], num_examples: int) -> None:
        depth = update_depth(tensors.keys())
        sums = self._sums.setdefault(depth, {})
        counts = self._counts.setdefault(depth, {})
        for key, value in tensors.items():
            ref = self._global[key]
            if ref.is_floating_point():
                term = value.detach().to(device=ref.device, dtype=self._sum_dtype(key)) * float(
                    num_examples
                )
                sums[key] = term if key not in sums else sums[key].add_(term)
                counts[key] = counts.get(key, 0) + num_examples
            else:
                v = value.detach().to(device=ref.device, dtype=ref.dtype)
                self._max[key] = (
                    v.clone() if key not in self._max else torch.maximum(self._max[key], v)
                )

    def _result(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, ref in self._global.items():
            if not ref.is_floating_point():
                out[key] = self._max[key].clone() if key in self._max else ref.clone()
                continue
            means = [
                self._sums[d][key] / float(self._counts[d][key])
                for d in sorted(self._sums)
                if key in self._sums[d]
            ]
            if not means:
                out[key] = ref.clone()
            else:
                out[key] = (torch.stack(means).sum(dim=0) / len(means)).to(ref.dtype)
        self._sums, self._counts = {}, {}
        return out


class TierBalancedMerge(MergeStrategy):
    """``"tier-balanced"``: per tensor, the mean over the tiers that hold it of each
    tier's example-weighted mean (benchmark-only; not registered)."""

    name = "tier-balanced"

    def begin(
        self, global_state: Mapping[str, Tensor], expected_clients: int
    ) -> TierBalancedAccumulator:
        """Start a round; see :meth:`MergeStrategy.begin`."""
        return TierBalancedAccumulator(global_state, expected_clients)
