"""The merge plug-in interface: streaming accumulation of client updates.

In federated FlexTrain (arXiv 2310.20457, Algorithm 2) each device uploads the tensors
of its prefix; the server merges them into a new global state. Strategies live one per
module (``pad``, ``holder_weighted``) behind this small ABC.

Merging is *streaming*: ``strategy.begin(global_state, expected_clients)`` returns an
:class:`Accumulator`; each validated update is folded into running sums by
``acc.add(tensors, num_examples)`` and can then be dropped; ``acc.finish()`` returns the
new global state. The accumulator holds O(model size) memory (one running sum and one
counter per tensor), never O(clients).

Common rules, shared by every strategy:

* Floating tensors are summed in float32 (float64 when the global tensor is float64)
  on the global tensor's device and cast back to the global dtype by ``finish``.
* Integer and bool tensors (BatchNorm ``num_batches_tracked``) are not averaged: the
  new value is the maximum over the clients that sent the tensor (the global value
  when nobody did). For ``num_batches_tracked`` this is the most-trained holder's
  count; it only matters for BatchNorm with ``momentum=None``.
* The global state passed to ``begin`` is never mutated; ``finish`` returns new tensors.
* An ``add`` is validated completely before anything is folded, so a rejected update
  (:class:`MergeError`) leaves the accumulator exactly as it was.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor


class MergeError(ValueError):
    """A client update cannot be merged (unknown key, wrong shape, non-finite values...)."""


class NonFiniteError(MergeError):
    """A client update holds NaN or infinite values."""


def is_finite(tensor: Tensor) -> bool:
    """True when every value of a floating tensor is finite.

    One pass, no boolean temporary: ``aminmax`` propagates NaN, and an infinity shows
    up as the minimum or the maximum. (Several times faster than ``isfinite().all()``
    on large tensors.)
    """
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.detach())
    return math.isfinite(float(low)) and math.isfinite(float(high))


class AccumulatorClosed(MergeError):
    """``add`` or ``finish`` was called on an accumulator that has already finished."""


class Accumulator(ABC):
    """Running state of one round's merge. Create it with :meth:`MergeStrategy.begin`."""

    def __init__(self, global_state: Mapping[str, Tensor], expected_clients: int) -> None:
        if isinstance(expected_clients, bool) or not isinstance(expected_clients, int):
            raise MergeError(f"expected_clients must be an int, got {expected_clients!r}")
        if expected_clients < 0:
            raise MergeError(f"expected_clients must be >= 0, got {expected_clients}")
        if not global_state:
            raise MergeError("global state is empty")
        self._global: dict[str, Tensor] = {k: v.detach() for k, v in global_state.items()}
        #: key -> (shape, floating?) of the global tensors: what validation compares.
        self._layout: dict[str, tuple[torch.Size, bool]] = {
            k: (v.shape, v.is_floating_point()) for k, v in self._global.items()
        }
        self.expected_clients = expected_clients
        #: Number of accepted ``add`` calls so far.
        self.num_clients = 0
        #: Sum of the accepted updates' example counts.
        self.num_examples = 0
        self._finished = False

    # -- validation shared by all strategies -------------------------------------------

    def validate(
        self, tensors: Mapping[str, Tensor], num_examples: int, *, check_finite: bool = True
    ) -> None:
        """Raise :class:`MergeError` if the update cannot be folded; changes nothing.

        Checks: the accumulator is open and below ``expected_clients``; ``num_examples``
        is an int > 0; the update is non-empty; every key exists in the global state;
        shapes are equal; a floating global tensor gets a floating tensor with only
        finite values (skipped with ``check_finite=False``, for callers that checked
        the values already); an integer/bool global tensor gets an integer/bool tensor.
        """
        if self._finished:
            raise AccumulatorClosed("accumulator already finished; begin a new round")
        if self.num_clients >= self.expected_clients:
            raise MergeError(
                f"round expects {self.expected_clients} client(s) and already has "
                f"{self.num_clients}"
            )
        if isinstance(num_examples, bool) or not isinstance(num_examples, int):
            raise MergeError(f"num_examples must be an int, got {num_examples!r}")
        if num_examples <= 0:
            raise MergeError(f"num_examples must be > 0, got {num_examples}")
        if not tensors:
            raise MergeError("update holds no tensors")
        layout = self._layout
        for key, value in tensors.items():
            ref = layout.get(key)
            if ref is None:
                raise MergeError(f"tensor {key!r} is not in the global state")
            if not isinstance(value, Tensor):
                raise MergeError(f"tensor {key!r} is a {type(value).__name__}, not a Tensor")
            shape, floating = ref
            if value.shape != shape:
                raise MergeError(
                    f"tensor {key!r} has shape {tuple(value.shape)}, "
                    f"the global state has {tuple(shape)}"
                )
            if floating:
                if not value.is_floating_point():
                    raise MergeError(f"tensor {key!r} must be floating, got {value.dtype}")
                if check_finite and not is_finite(value):
                    raise NonFiniteError(f"tensor {key!r} holds NaN or infinite values")
            elif value.is_floating_point() or value.is_complex():
                raise MergeError(f"tensor {key!r} must be integer like the global state")

    # -- the protocol ----------------------------------------------------------------

    def add(
        self, tensors: Mapping[str, Tensor], num_examples: int, *, checked_finite: bool = False
    ) -> None:
        """Validate one client update and fold it into the running sums.

        Args:
            tensors: a subset of the global state's keys (e.g. one prefix), same shapes.
            num_examples: examples the client trained on this round; must be > 0.
            checked_finite: the caller has already verified that every floating value
                is finite (the aggregator checks a whole payload in one pass); the
                per-tensor check is skipped. Everything else is still validated.

        Raises:
            MergeError: the update was rejected; the accumulator is unchanged.
            NonFiniteError: (a MergeError) a floating tensor holds NaN or infinity.
        """
        self.validate(tensors, num_examples, check_finite=not checked_finite)
        self._fold(tensors, num_examples)
        self.num_clients += 1
        self.num_examples += num_examples

    def finish(self) -> dict[str, Tensor]:
        """Return the new global state (new tensors, global dtypes) and close the round.

        With zero accepted updates the result is a copy of the global state.

        Raises:
            AccumulatorClosed: ``finish`` was already called.
        """
        if self._finished:
            raise AccumulatorClosed("accumulator already finished")
        self._finished = True
        return self._result()

    @abstractmethod
    def _fold(self, tensors: Mapping[str, Tensor], num_examples: int) -> None:
        """Fold one *validated* update into the running state (must not fail)."""

    @abstractmethod
    def _result(self) -> dict[str, Tensor]:
        """Compute the merged state from the running state."""

    # -- helpers for subclasses ----------------------------------------------------------

    def _sum_dtype(self, key: str) -> torch.dtype:
        ref = self._global[key]
        return torch.float64 if ref.dtype == torch.float64 else torch.float32


class MergeStrategy(ABC):
    """A named rule for turning one round's client updates into a new global state."""

    #: Registry name (``"pad"``, ``"holder-weighted"``).
    name: str = ""

    @abstractmethod
    def begin(self, global_state: Mapping[str, Tensor], expected_clients: int) -> Accumulator:
        """Start a round: an accumulator that merges into ``global_state``.

        Args:
            global_state: the current global state (never mutated; must stay valid and
                unchanged until ``finish`` returns).
            expected_clients: the most updates this round may accept (``add`` beyond it
                raises :class:`MergeError`). With a quorum, fewer may arrive; only
                accepted updates count.
        """
