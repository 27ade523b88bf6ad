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

from torch import Tensor

from flextrain.core.merge.base import LinearAccumulator, MergeStrategy


class HolderWeightedAccumulator(LinearAccumulator):
    """Running sums for :class:`HolderWeightedMerge`: sum of n_j*u_j and of n_j per tensor."""

    def _weight(self, num_examples: int) -> float:
        return float(num_examples)

    def _count(self, num_examples: int) -> int:
        return num_examples

    def _result(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, ref in self._global.items():
            total = self._state_of(key)
            if total is None:
                out[key] = ref.clone()
            elif self._floating(key):
                # In place, as in pad: the sums are not needed after finish.
                out[key] = total.div_(float(self._counts[key])).to(ref.dtype)
            else:
                out[key] = total.clone()
        self._sums = {}  # they are the result now
        return out


class HolderWeightedMerge(MergeStrategy):
    """``"holder-weighted"``: example-weighted mean over each tensor's senders."""

    name = "holder-weighted"

    def begin(
        self, global_state: Mapping[str, Tensor], expected_clients: int
    ) -> HolderWeightedAccumulator:
        """Start a round; see :meth:`MergeStrategy.begin`."""
        return HolderWeightedAccumulator(global_state, expected_clients)
