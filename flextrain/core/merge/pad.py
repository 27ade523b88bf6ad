"""The paper's merge: pad missing tensors with the global copy, then a uniform mean.

FlexTrain (arXiv 2310.20457, Algorithm 2): the server fills every device's missing
deep blocks with its current copy and averages over devices with equal weight. For a
tensor t with global value g and N accepted updates of which the holders H_t sent u_j::

    new_t = (1/N) * (sum_{j in H_t} u_j + (N - |H_t|) * g)
          = g + (|H_t| / N) * mean_{j in H_t}(u_j - g)

so a deep block moves by (share of holders) x (their mean update).

N is the number of accepted ``add`` calls of the round: with a quorum, a client that
never pushed does not count. Example counts are validated but do not weigh (uniform
mean, as in the paper).

Edge cases: zero clients -> a copy of the global state; a tensor nobody sent -> the
global value; a single client -> its tensors, global values elsewhere; unequal example
counts -> ignored. Integer tensors: maximum over holders (see :mod:`.base`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from flextrain.core.merge.base import Accumulator, MergeStrategy


class PadAccumulator(Accumulator):
    """Running sums for :class:`PadMerge`: per tensor, sum of sent values and holder count."""

    def __init__(self, global_state: Mapping[str, Tensor], expected_clients: int) -> None:
        super().__init__(global_state, expected_clients)
        self._sums: dict[str, Tensor] = {}
        self._holders: dict[str, int] = {}
        self._maxima: dict[str, Tensor] = {}

    def _fold(self, tensors: Mapping[str, Tensor], num_examples: int) -> None:
        totals: list[Tensor] = []
        addends: list[Tensor] = []
        for key, value in tensors.items():
            ref = self._global[key]
            v = value.detach().to(ref.device)
            if ref.is_floating_point():
                v = v.to(self._sum_dtype(key))
                total = self._sums.get(key)
                if total is None:
                    self._sums[key] = v.clone()
                else:
                    totals.append(total)
                    addends.append(v)
            else:
                v = v.to(ref.dtype)
                old = self._maxima.get(key)
                self._maxima[key] = v.clone() if old is None else torch.maximum(old, v)
            self._holders[key] = self._holders.get(key, 0) + 1
        if totals:
            torch._foreach_add_(totals, addends)  # one call for all tensors: same sums as add_ each

    def _result(self) -> dict[str, Tensor]:
        n = self.num_clients
        out: dict[str, Tensor] = {}
        for key, ref in self._global.items():
            if key in self._sums:
                # In place: the sums are not needed after finish, and the merge then
                # needs no memory beyond them.
                total = self._sums.pop(key)
                missing = n - self._holders[key]
                if missing:
                    total.add_(ref, alpha=missing)
                out[key] = total.div_(n).to(ref.dtype)
            elif key in self._maxima:
                out[key] = self._maxima[key].clone()
            else:
                out[key] = ref.clone()
        return out


class PadMerge(MergeStrategy):
    """``"pad"``: missing tensors padded with the global copy; uniform mean over clients."""

    name = "pad"

    def begin(self, global_state: Mapping[str, Tensor], expected_clients: int) -> PadAccumulator:
        """Start a round; see :meth:`MergeStrategy.begin`."""
        return PadAccumulator(global_state, expected_clients)
