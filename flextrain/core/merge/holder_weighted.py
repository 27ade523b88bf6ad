"""Holder-weighted merge: average each tensor over the clients that sent it.

The common alternative to the paper's padding (HeteroFL, Diao et al. 2021; DepthFL,
Kim et al. 2023), selectable for FlexTrain (arXiv 2310.20457) runs. For a tensor t
whose holders H_t sent u_j after training on n_j examples::

    new_t = sum_{j in H_t} n_j * u_j / sum_{j in H_t} n_j

Tensors nobody sent keep their global value, so deep blocks are not pulled back toward
the old global copy by devices that never trained them.

Edge cases: zero clients -> a copy of the global state; a single client -> its tensors
exactly (up to float32 rounding), global values elsewhere; unequal example counts ->
weights. Integer tensors: maximum over holders (see :mod:`.base`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from flextrain.core.merge.base import Accumulator, MergeStrategy


class HolderWeightedAccumulator(Accumulator):
    """Running sums for :class:`HolderWeightedMerge`: sum of n_j*u_j and of n_j per tensor."""

    def __init__(self, global_state: Mapping[str, Tensor], expected_clients: int) -> None:
        super().__init__(global_state, expected_clients)
        self._sums: dict[str, Tensor] = {}
        self._weights: dict[str, int] = {}
        self._maxima: dict[str, Tensor] = {}

    def _fold(self, tensors: Mapping[str, Tensor], num_examples: int) -> None:
        for key, value in tensors.items():
            ref = self._global[key]
            v = value.detach().to(ref.device)
            if ref.is_floating_point():
                weighted = v.to(self._sum_dtype(key)) * float(num_examples)
                if key in self._sums:
                    self._sums[key].add_(weighted)
                else:
                    self._sums[key] = weighted
                self._weights[key] = self._weights.get(key, 0) + num_examples
            else:
                v = v.to(ref.dtype)
                old = self._maxima.get(key)
                self._maxima[key] = v.clone() if old is None else torch.maximum(old, v)

    def _result(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, ref in self._global.items():
            if key in self._sums:
                # In place, as in pad: the sums are not needed after finish.
                out[key] = self._sums.pop(key).div_(float(self._weights[key])).to(ref.dtype)
            elif key in self._maxima:
                out[key] = self._maxima[key].clone()
            else:
                out[key] = ref.clone()
        return out


class HolderWeightedMerge(MergeStrategy):
    """``"holder-weighted"``: example-weighted mean over each tensor's senders."""

    name = "holder-weighted"

    def begin(
        self, global_state: Mapping[str, Tensor], expected_clients: int
    ) -> HolderWeightedAccumulator:
        """Start a round; see :meth:`MergeStrategy.begin`."""
        return HolderWeightedAccumulator(global_state, expected_clients)
