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

from torch import Tensor

from flextrain.core.merge.base import LinearAccumulator, MergeStrategy


class PadAccumulator(LinearAccumulator):
    """Running sums for :class:`PadMerge`: per tensor, sum of sent values and holder count."""

    def _weight(self, num_examples: int) -> float:
        return 1.0  # a uniform mean: example counts do not weigh

    def _count(self, num_examples: int) -> int:
        return 1  # holders

    def _result(self) -> dict[str, Tensor]:
        n = self.num_clients
        out: dict[str, Tensor] = {}
        for key, ref in self._global.items():
            total = self._state_of(key)
            if total is None:
                out[key] = ref.clone()
            elif self._floating(key):
                # In place: the sums are not needed after finish, and the merge then
                # needs no memory beyond them.
                missing = n - self._counts[key]
                if missing:
                    total.add_(ref, alpha=missing)
                out[key] = total.div_(n).to(ref.dtype)
            else:
                out[key] = total.clone()
        self._sums = {}  # they are the result now
        return out


class PadMerge(MergeStrategy):
    """``"pad"``: missing tensors padded with the global copy; uniform mean over clients."""

    name = "pad"

    def begin(self, global_state: Mapping[str, Tensor], expected_clients: int) -> PadAccumulator:
        """Start a round; see :meth:`MergeStrategy.begin`."""
        return PadAccumulator(global_state, expected_clients)
