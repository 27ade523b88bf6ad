"""The merge plug-in interface: streaming accumulation of client updates.

In federated FlexTrain (arXiv 2310.20457, Algorithm 2) each device uploads the tensors
of its prefix; the server merges them into a new global state. Strategies live one per
module (``pad``, ``holder_weighted``, ``robust``) behind this small ABC.

Merging is *streaming*: ``strategy.begin(global_state, expected_clients)`` returns an
:class:`Accumulator`; each validated update is folded into running sums by
``acc.add(tensors, num_examples)`` and can then be dropped; ``acc.finish()`` returns the
new global state. The averaging accumulators (:class:`LinearAccumulator`) hold O(model
size) memory (one running sum and one counter per tensor), never O(clients); a robust
statistic cannot be computed from running sums, so the robust merge keeps every update
until ``finish`` (O(clients x model), see :mod:`.robust`).

An update that arrives in pieces (a network stream) can be folded as it arrives,
without first being assembled: ``acc.stage(layout, num_examples)`` returns a
:class:`StagedUpdate` that takes consecutive flat pieces of each tensor (``write``),
checks their values, and changes the running sums only at ``commit``, once every
announced tensor is complete. Until then the accumulator is exactly as it was, so a
stream that breaks off, or a piece with NaN, leaves no trace.

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
from collections.abc import Mapping, Sequence
from typing import TypeAlias

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
    """``add``, ``stage`` or ``finish`` was called on an accumulator that has already finished."""


#: Name, shape and dtype of each tensor an update will carry (see ``Accumulator.stage``).
Layout: TypeAlias = Mapping[str, tuple[tuple[int, ...] | torch.Size, torch.dtype]]
#: ``(key, offset, values)``: the 1-D ``values`` are elements ``offset, offset + 1, ...``
#: of tensor ``key`` flattened in row-major order.
Piece: TypeAlias = tuple[str, int, Tensor]


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
        #: The update being staged, if any (one at a time: see ``stage``).
        self._staged: StagedUpdate | None = None

    # -- validation shared by all strategies -------------------------------------------

    def _check_open(self, num_examples: int) -> None:
        """The checks of an update that do not depend on its tensors."""
        if self._finished:
            raise AccumulatorClosed("accumulator already finished; begin a new round")
        if self._staged is not None:
            raise MergeError("another update is being staged; commit or abort it first")
        if self.num_clients >= self.expected_clients:
            raise MergeError(
                f"round expects {self.expected_clients} client(s) and already has "
                f"{self.num_clients}"
            )
        if isinstance(num_examples, bool) or not isinstance(num_examples, int):
            raise MergeError(f"num_examples must be an int, got {num_examples!r}")
        if num_examples <= 0:
            raise MergeError(f"num_examples must be > 0, got {num_examples}")

    def _check_tensor(self, key: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> bool:
        """Check one announced tensor against the global state; True when it is floating."""
        ref = self._layout.get(key)
        if ref is None:
            raise MergeError(f"tensor {key!r} is not in the global state")
        want, floating = ref
        if tuple(shape) != tuple(want):
            raise MergeError(
                f"tensor {key!r} has shape {tuple(shape)}, the global state has {tuple(want)}"
            )
        if floating:
            if not dtype.is_floating_point:
                raise MergeError(f"tensor {key!r} must be floating, got {dtype}")
        elif dtype.is_floating_point or dtype.is_complex:
            raise MergeError(f"tensor {key!r} must be integer like the global state")
        return floating

    def validate(
        self, tensors: Mapping[str, Tensor], num_examples: int, *, check_finite: bool = True
    ) -> None:
        """Raise :class:`MergeError` if the update cannot be folded; changes nothing.

        Checks: the accumulator is open, no update is being staged, and it is below
        ``expected_clients``; ``num_examples`` is an int > 0; the update is non-empty;
        every key exists in the global state; shapes are equal; a floating global tensor
        gets a floating tensor with only finite values (skipped with
        ``check_finite=False``, for callers that checked the values already); an
        integer/bool global tensor gets an integer/bool tensor.
        """
        self._check_open(num_examples)
        if not tensors:
            raise MergeError("update holds no tensors")
        for key, value in tensors.items():
            if key in self._layout and not isinstance(value, Tensor):
                raise MergeError(f"tensor {key!r} is a {type(value).__name__}, not a Tensor")
            floating = self._check_tensor(key, value.shape, value.dtype)
            if floating and check_finite and not is_finite(value):
                raise NonFiniteError(f"tensor {key!r} holds NaN or infinite values")

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

    def stage(self, layout: Layout, num_examples: int) -> StagedUpdate:
        """Begin an update that will arrive in pieces (see :class:`StagedUpdate`).

        Args:
            layout: name -> (shape, dtype) of every tensor the update carries, checked
                here as ``validate`` checks tensors (values are checked as they are
                written).
            num_examples: as for ``add``.

        One update is staged at a time: ``add`` and another ``stage`` are refused until
        this one is committed or aborted.

        Raises:
            MergeError: the update cannot be taken; the accumulator is unchanged.
        """
        self._check_open(num_examples)
        if not layout:
            raise MergeError("update holds no tensors")
        floating = {key: self._check_tensor(key, shape, dtype) for key, (shape, dtype) in layout.items()}
        staged = self._stage(
            {key: (torch.Size(shape), dtype, floating[key]) for key, (shape, dtype) in layout.items()},
            num_examples,
        )
        self._staged = staged
        return staged

    def finish(self) -> dict[str, Tensor]:
        """Return the new global state (new tensors, global dtypes) and close the round.

        With zero accepted updates the result is a copy of the global state. An update
        still being staged is left out (its ``write`` and ``commit`` then raise
        :class:`AccumulatorClosed`).

        Raises:
            AccumulatorClosed: ``finish`` was already called.
        """
        if self._finished:
            raise AccumulatorClosed("accumulator already finished")
        self._finished = True
        self._staged = None
        return self._result()

    @abstractmethod
    def _fold(self, tensors: Mapping[str, Tensor], num_examples: int) -> None:
        """Fold one *validated* update into the running state (must not fail)."""

    @abstractmethod
    def _result(self) -> dict[str, Tensor]:
        """Compute the merged state from the running state."""

    def _stage(self, layout: StageLayout, num_examples: int) -> StagedUpdate:
        """The staged update for a checked layout. This default assembles the pieces
        into whole tensors and folds them with ``_fold`` at commit (memory: one update);
        strategies that can fold pieces directly override it."""
        return AssembledUpdate(self, layout, num_examples)

    def _release(self, staged: StagedUpdate, committed: bool) -> None:
        """Called by a staged update that is done (committed or not)."""
        if self._staged is staged:
            self._staged = None
        if committed:
            self.num_clients += 1
            self.num_examples += staged.num_examples

    def weight(self, num_examples: int) -> float:
        """How much an update of `num_examples` weighs in the running state (1 for a
        strategy that does not weigh updates by their counts)."""
        return 1.0

    # -- helpers for subclasses ----------------------------------------------------------

    def _sum_dtype(self, key: str) -> torch.dtype:
        ref = self._global[key]
        return torch.float64 if ref.dtype == torch.float64 else torch.float32


#: A checked layout: key -> (shape, dtype, floating?).
StageLayout: TypeAlias = dict[str, tuple[torch.Size, torch.dtype, bool]]


class StagedUpdate(ABC):
    """One client update folded piece by piece as it arrives, applied at ``commit``.

    ``write`` takes pieces in order: for each tensor, its flat values from offset 0 to
    the end, in as many pieces as it arrived in (tensors may interleave only in the
    order of the layout's pieces; each tensor's own pieces must be consecutive). Values
    of floating tensors are checked finite as they are written. ``commit`` checks that
    every tensor of the layout is complete and only then changes the accumulator; a
    ``write`` or ``commit`` that raises, and ``abort``, leave it exactly as it was
    before ``stage``. Not thread-safe: callers serialise the calls.
    """

    def __init__(self, acc: Accumulator, layout: StageLayout, num_examples: int) -> None:
        self._acc = acc
        self._shapes = layout
        self._numel = {key: shape.numel() for key, (shape, _, _) in layout.items()}
        self._written = dict.fromkeys(layout, 0)
        self.num_examples = num_examples
        #: "open", then "committed", "aborted" or "failed".
        self.state = "open"

    def _require_open(self) -> None:
        if self._acc._finished and self.state == "open":
            self.state = "failed"
            raise AccumulatorClosed("the round finished while this update was being staged")
        if self.state != "open":
            raise MergeError(f"this staged update is {self.state}")

    def write(self, pieces: Sequence[Piece], *, checked_finite: bool = False) -> None:
        """Check and fold consecutive pieces (see the class docstring).

        Args:
            pieces: ``(key, offset, values)`` with 1-D ``values`` of the announced dtype.
            checked_finite: the caller has checked that every floating value is finite.

        Raises:
            MergeError: a piece is out of order, too long, of another dtype or not
                announced; the update is failed and the accumulator unchanged.
            NonFiniteError: a floating piece holds NaN or infinity (same effect).
        """
        self._require_open()
        try:
            written = self._written
            for key, offset, values in pieces:
                layout = self._shapes.get(key)
                if layout is None:
                    raise MergeError(f"tensor {key!r} was not announced for this update")
                if values.dim() != 1 or values.dtype != layout[1]:
                    raise MergeError(
                        f"tensor {key!r}: pieces must be 1-D {layout[1]}, got {values.dim()}-D {values.dtype}"
                    )
                if offset != written[key] or offset + values.numel() > self._numel[key]:
                    raise MergeError(
                        f"tensor {key!r}: piece of {values.numel()} values at offset {offset}, "
                        f"expected offset {written[key]} of {self._numel[key]}"
                    )
                if layout[2] and not checked_finite and not is_finite(values):
                    raise NonFiniteError(f"tensor {key!r} holds NaN or infinite values")
                written[key] = offset + values.numel()
        except MergeError:
            self._fail()
            raise
        self._apply(pieces)

    def commit(self) -> None:
        """Apply the complete update to the accumulator.

        Raises:
            MergeError: a tensor of the layout is incomplete (the update is failed and
                the accumulator unchanged), or the update is not open.
            AccumulatorClosed: the round finished meanwhile.
        """
        self._require_open()
        for key, numel in self._numel.items():
            if self._written[key] != numel:
                self._fail()
                raise MergeError(f"tensor {key!r} is incomplete: {self._written[key]} of {numel} values")
        self._commit()
        self.state = "committed"
        self._acc._release(self, committed=True)

    def abort(self) -> None:
        """Drop the update; the accumulator stays as it was. Idempotent."""
        if self.state == "open":
            self.state = "aborted"
            self._discard()
            self._acc._release(self, committed=False)

    def _fail(self) -> None:
        self.state = "failed"
        self._discard()
        self._acc._release(self, committed=False)

    @abstractmethod
    def _apply(self, pieces: Sequence[Piece]) -> None:
        """Fold checked pieces into staging memory (never the accumulator's state)."""

    @abstractmethod
    def _commit(self) -> None:
        """Make the staged update part of the accumulator (must not fail)."""

    @abstractmethod
    def _discard(self) -> None:
        """Release staging memory of an update that will not be committed."""


class AssembledUpdate(StagedUpdate):
    """The default staging: pieces are copied into whole tensors, folded at commit."""

    def __init__(self, acc: Accumulator, layout: StageLayout, num_examples: int) -> None:
        super().__init__(acc, layout, num_examples)
        self._tensors = {key: torch.empty(shape, dtype=dtype) for key, (shape, dtype, _) in layout.items()}

    def _apply(self, pieces: Sequence[Piece]) -> None:
        for key, offset, values in pieces:
            self._tensors[key].view(-1)[offset : offset + values.numel()].copy_(values)

    def _commit(self) -> None:
        self._acc._fold(self._tensors, self.num_examples)
        self._tensors = {}

    def _discard(self) -> None:
        self._tensors = {}


class LinearAccumulator(Accumulator):
    """The running state of a weighted average, shared by the built-in strategies.

    Per floating tensor: the sum of ``weight(n) * value`` over the updates that sent it
    and the sum of ``count(n)``; per integer tensor: the maximum over its senders (see
    the module docstring). Sums are kept flat (1-D) in the sum dtype. Subclasses give
    the weight and the count of an update with ``n`` examples and turn the sums into the
    result.

    Staging (``stage``) folds each piece as it arrives into a second buffer per tensor,
    ``staged = sum + weight * piece``, and ``commit`` swaps the two; the old sum becomes
    the next update's staging buffer. Memory: two sums per tensor, and no copy of the
    update itself, which is never assembled.
    """

    def __init__(self, global_state: Mapping[str, Tensor], expected_clients: int) -> None:
        super().__init__(global_state, expected_clients)
        #: key -> flat running sum (floating) or running maximum (integer) tensor.
        self._sums: dict[str, Tensor] = {}
        #: key -> sum of count(n) over the updates that sent a floating tensor.
        self._counts: dict[str, int] = {}
        #: key -> flat buffers of the sum's size, free for the next staging targets.
        self._spare: dict[str, list[Tensor]] = {}

    @abstractmethod
    def _weight(self, num_examples: int) -> float:
        """Factor of an update's floating values in the running sum."""

    def weight(self, num_examples: int) -> float:
        return self._weight(num_examples)

    @abstractmethod
    def _count(self, num_examples: int) -> int:
        """What an update adds to the counter of each floating tensor it sends."""

    def _floating(self, key: str) -> bool:
        return self._layout[key][1]

    def _fold(self, tensors: Mapping[str, Tensor], num_examples: int) -> None:
        weight = self._weight(num_examples)
        totals: list[Tensor] = []
        addends: list[Tensor] = []
        for key, value in tensors.items():
            ref = self._global[key]
            v = value.detach().to(ref.device).reshape(-1)
            total = self._sums.get(key)
            if self._floating(key):
                v = v.to(self._sum_dtype(key))
                if total is None:
                    self._sums[key] = v.clone() if weight == 1 else v * weight
                else:
                    totals.append(total)
                    addends.append(v)
                self._counts[key] = self._counts.get(key, 0) + self._count(num_examples)
            else:
                v = v.to(ref.dtype)
                self._sums[key] = v.clone() if total is None else torch.maximum(total, v)
        if totals:
            # One call for all tensors; the same values as add_ on each.
            torch._foreach_add_(totals, addends, alpha=weight)

    def _stage(self, layout: StageLayout, num_examples: int) -> StagedUpdate:
        return _SumStage(self, layout, num_examples)

    def recycle(self, finished: Accumulator, retired: Mapping[str, Tensor] | None = None) -> None:
        """Take over memory for staging: the staging buffers of a finished accumulator
        of the same model (the previous round's) and, if given, tensors nobody uses any
        more (`retired`, e.g. the previous round's global state: they will be
        overwritten). Large buffers are mapped fresh by the allocator on every
        allocation and cost a page fault per 4 KiB on first write; reused, they do not.
        Buffers that do not match a tensor's size, sum dtype and device are left."""
        offered: list[tuple[str, Tensor]] = []
        if isinstance(finished, LinearAccumulator) and finished._finished:
            offered += [(k, t) for k, ts in finished._spare.items() for t in ts]
            finished._spare = {}
        offered += [(k, t.detach()) for k, t in (retired or {}).items() if t.is_contiguous()]
        # Never memory the merge reads (this round's global state), nor a buffer twice;
        # two per tensor are all staging uses (the sum and the next target).
        taken = {t.data_ptr() for t in self._global.values()}
        taken |= {t.data_ptr() for ts in self._spare.values() for t in ts}
        for key, buffer in offered:
            ref = self._global.get(key)
            pool = self._spare.setdefault(key, []) if ref is not None else []
            if ref is None or len(pool) >= 2 or not buffer.numel() or buffer.data_ptr() in taken:
                continue
            want = self._sum_dtype(key) if self._floating(key) else ref.dtype
            if buffer.numel() == ref.numel() and buffer.dtype == want and buffer.device == ref.device:
                pool.append(buffer.view(-1))
                taken.add(buffer.data_ptr())

    def _state_of(self, key: str) -> Tensor | None:
        """The running sum (or maximum) of ``key`` in the global shape, None if unsent."""
        total = self._sums.get(key)
        return None if total is None else total.view(self._global[key].shape)


#: Pieces of at least this many elements are folded one by one (one fused pass each);
#: smaller ones are batched into a few foreach calls (fewer calls per piece).
_LARGE_PIECE = 1 << 15


class _SumStage(StagedUpdate):
    """Staging for :class:`LinearAccumulator`: ``target = sum + weight * piece``."""

    _acc: LinearAccumulator

    def __init__(self, acc: LinearAccumulator, layout: StageLayout, num_examples: int) -> None:
        super().__init__(acc, layout, num_examples)
        self._weight = acc._weight(num_examples)
        self._targets: dict[str, Tensor] = {}
        for key, (shape, _, floating) in layout.items():
            ref = acc._global[key]
            dtype = acc._sum_dtype(key) if floating else ref.dtype
            pool = acc._spare.get(key)
            self._targets[key] = pool.pop() if pool else torch.empty(shape.numel(), dtype=dtype, device=ref.device)

    def _apply(self, pieces: Sequence[Piece]) -> None:
        acc, weight, targets = self._acc, self._weight, self._targets
        sums = acc._sums
        device_of = acc._global
        # Small pieces are batched into foreach calls: copy the current sum (or, for a
        # first sender, the values) into the target, then add (or scale, or take the
        # maximum). Large ones get one fused pass each.
        copy_to: list[Tensor] = []
        copy_from: list[Tensor] = []
        add_to: list[Tensor] = []
        add_from: list[Tensor] = []
        scale: list[Tensor] = []
        max_to: list[Tensor] = []
        max_from: list[Tensor] = []
        for key, offset, values in pieces:
            end = offset + values.numel()
            target = targets[key]
            whole = offset == 0 and end == target.numel()
            out = target if whole else target[offset:end]
            if values.device != device_of[key].device:
                values = values.to(device_of[key].device)
            total = sums.get(key)
            current = None if total is None else (total if whole else total[offset:end])
            if not self._shapes[key][2]:  # integer: running maximum
                copy_to.append(out)
                if current is None:
                    copy_from.append(values)
                else:
                    copy_from.append(current)
                    max_to.append(out)
                    max_from.append(values)
            elif current is None:  # the first sender of this tensor
                if values.numel() >= _LARGE_PIECE:
                    out.copy_(values)
                    if weight != 1:
                        out.mul_(weight)
                else:
                    copy_to.append(out)
                    copy_from.append(values)
                    if weight != 1:
                        scale.append(out)
            elif values.numel() >= _LARGE_PIECE:
                torch.add(current, values, alpha=weight, out=out)
            else:
                copy_to.append(out)
                copy_from.append(current)
                add_to.append(out)
                add_from.append(values)
        if copy_to:
            torch._foreach_copy_(copy_to, copy_from)
        if add_to:
            torch._foreach_add_(add_to, add_from, alpha=weight)
        if scale:
            torch._foreach_mul_(scale, weight)
        if max_to:
            torch._foreach_maximum_(max_to, max_from)

    def _commit(self) -> None:
        acc = self._acc
        count = acc._count(self.num_examples)
        for key, target in self._targets.items():
            old = acc._sums.get(key)
            acc._sums[key] = target
            if old is not None:
                acc._spare.setdefault(key, []).append(old)
            if self._shapes[key][2]:
                acc._counts[key] = acc._counts.get(key, 0) + count
        self._targets = {}

    def _discard(self) -> None:
        # The staging buffers stay with the accumulator for the next update.
        for key, target in self._targets.items():
            self._acc._spare.setdefault(key, []).append(target)
        self._targets = {}


class MergeStrategy(ABC):
    """A named rule for turning one round's client updates into a new global state."""

    #: Registry name (``"pad"``, ``"holder-weighted"``, ``"robust"``).
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
