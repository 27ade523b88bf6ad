"""The aggregator's round logic, free of gRPC: who is expected, what an update must
look like, when a round closes, and the merge.

A round closes when every expected client has pushed, or when its deadline has passed
and at least `quorum` of the expected clients have pushed; pushes for a closed round
are then stale and the stragglers join the next round. Each update is checked
completely (header first, before its bytes are read; then every value as it arrives)
and is part of the strategy's running sums only once all of it has arrived and passed:
an update is folded into a staging copy of the sums chunk by chunk and committed at its
end (``UpdateStage``; see ``flextrain.core.merge.base.StagedUpdate``), so a rejected or
broken-off update changes nothing and the aggregator never holds an update's payload.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flextrain.aggregator.errors import Rejected
from flextrain.api.flextrainjob import quorum_count
from flextrain.contract.refusals import Reason
from flextrain.core.merge import is_finite, strategy_for
from flextrain.core.merge.base import (
    Accumulator,
    AccumulatorClosed,
    LinearAccumulator,
    MergeError,
    NonFiniteError,
    StagedUpdate,
)
from flextrain.core.partition import prefix_keys
from flextrain.jobplan import JobPlan, TierPlan
from flextrain.wire.tensors import (
    PayloadPieces,
    Spec,
    WireFormatError,
    compression_dtype,
    wire_dtype_for,
)

#: The most examples one update may count when the shard sizes are unknown (the
#: aggregator cannot read the training data): more than any dataset FlexTrain reads has.
MAX_EXAMPLES = 10_000_000
#: The largest finite float32.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class ValueBounds:
    """What the values of one round's updates may be (``spec.aggregation.valueBound``).

    A floating value of tensor T may have a magnitude of at most ``bound * max(1,
    max|T|)``, T taken from the round's global model: a finite but huge value (3e38)
    would make the merged model infinite. An integer value (BatchNorm's
    ``num_batches_tracked``) must lie in ``0 .. T + steps``, where steps is at most the
    sender's examples times the job's local epochs (a step takes at least one example).

    Checking is one pass per chunk in the usual case: a chunk whose floating values are
    all within ``bound`` (the smallest limit of any tensor) passes at once; only another
    chunk is checked piece by piece against each tensor's own limit.
    """

    def __init__(self, global_state: Mapping[str, Tensor], bound: float, local_epochs: int) -> None:
        self.bound = bound
        self.local_epochs = local_epochs
        self._global = global_state
        self._limits: dict[str, float] = {}
        self._counters: dict[str, int] = {}

    def limit(self, name: str) -> float:
        """The largest magnitude a value of floating tensor `name` may have."""
        limit = self._limits.get(name)
        if limit is None:
            ref = self._global[name]
            largest = float(ref.detach().abs().max()) if ref.numel() else 0.0
            limit = self._limits[name] = self.bound * max(1.0, largest)
        return limit

    def counter_most(self, name: str, examples: int) -> int:
        """The largest value of integer tensor `name` a sender of `examples` may have."""
        base = self._counters.get(name)
        if base is None:
            ref = self._global[name]
            base = self._counters[name] = int(ref.max()) if ref.numel() else 0
        return base + examples * self.local_epochs

    def check(
        self, pieces: Sequence[tuple[str, int, Tensor]], flat: Tensor | None, examples: int, client: str
    ) -> float:
        """Check `pieces` (`flat`: their floating values as float32, when they are all
        float32); returns the largest floating magnitude among them.

        Raises:
            Rejected: ``non_finite`` or ``out_of_bounds``, naming the tensor.
        """
        largest = 0.0
        if flat is not None and flat.numel():
            low, high = (float(v) for v in torch.aminmax(flat))
            largest = max(-low, high)
            if largest <= self.bound:  # NaN compares False: checked piece by piece
                self._check_counters(pieces, examples, client)
                return largest
        largest = 0.0
        for name, _, values in pieces:
            if not values.numel():
                continue
            if not values.dtype.is_floating_point:
                self._check_counter(name, values, examples, client)
                continue
            low, high = (float(v) for v in torch.aminmax(values))
            if not (math.isfinite(low) and math.isfinite(high)):
                raise Rejected(Reason.NON_FINITE, f"tensor {name!r} holds NaN or infinite values")
            magnitude = max(-low, high)
            if magnitude > (limit := self.limit(name)):
                raise Rejected(
                    Reason.OUT_OF_BOUNDS,
                    f"tensor {name!r} holds a value of magnitude {magnitude:.3g}; at most {limit:.3g} is taken "
                    f"(valueBound {self.bound:g} x the global tensor's largest magnitude, at least 1)",
                )
            largest = max(largest, magnitude)
        return largest

    def _check_counters(self, pieces: Sequence[tuple[str, int, Tensor]], examples: int, client: str) -> None:
        for name, _, values in pieces:
            if not values.dtype.is_floating_point and values.numel():
                self._check_counter(name, values, examples, client)

    def _check_counter(self, name: str, values: Tensor, examples: int, client: str) -> None:
        low, high = int(values.min()), int(values.max())
        most = self.counter_most(name, examples)
        if low < 0 or high > most:
            raise Rejected(
                Reason.OUT_OF_BOUNDS,
                f"integer tensor {name!r} holds {high if high > most else low}; client {client} may send 0 to {most} "
                f"(the global value plus at most {examples} examples x {self.local_epochs} local epochs of steps)",
            )

@dataclass
class ClientInfo:
    """A trainer replica that joined."""

    client_id: str
    tier: str
    replica: int
    depth: int
    joined_at: float
    last_round_pushed: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0


@dataclass
class TierCounters:
    bytes_received: int = 0
    bytes_sent: int = 0
    last_round_pushed: int = 0


def client_id_for(tier: str, replica: int) -> str:
    """Stable id: a restarted trainer or aggregator maps the same replica to the same id."""
    return f"{tier}-{replica}"


@dataclass
class RoundState:
    """Bookkeeping of the open round."""

    number: int
    opened_at: float
    deadline: float
    pushed: set[str] = field(default_factory=set)
    examples: int = 0
    #: client id -> (examples, largest floating magnitude) of each counted update: who
    #: is named when the merge is not finite.
    updates: dict[str, tuple[int, float]] = field(default_factory=dict)


class Aggregation:
    """Global model + the open round. Not thread-safe: callers serialise mutations."""

    def __init__(
        self,
        plan: JobPlan,
        global_state: Mapping[str, Tensor],
        *,
        completed_rounds: int = 0,
        tier_counters: Mapping[str, TierCounters] | None = None,
        clock: Callable[[], float] = time.time,
        max_update_bytes: int | None = None,
    ) -> None:
        spec = plan.job.spec
        self.plan = plan
        self.total_rounds = spec.training.rounds
        self.quorum = spec.aggregation.quorum
        self.round_timeout = float(spec.aggregation.round_timeout_seconds)
        self.compression = compression_dtype(spec.aggregation.compression)
        self.strategy = strategy_for(spec.aggregation)
        self._clock = clock
        self.global_state: dict[str, Tensor] = {k: v.detach().clone() for k, v in global_state.items()}
        self.completed_rounds = completed_rounds
        self.clients: dict[str, ClientInfo] = {}
        self.tiers: dict[str, TierCounters] = {t.name: TierCounters() for t in plan.tiers}
        for name, counters in (tier_counters or {}).items():
            if name in self.tiers:
                self.tiers[name] = TierCounters(**vars(counters))
        self._keys = list(self.global_state)
        self._expected: dict[int, dict[str, Spec]] = {}
        self._expected_list: dict[int, list[Spec]] = {}
        self.max_update_bytes = max_update_bytes
        #: Examples in each data shard (shards.shard_sizes): an update may count at most
        #: its sender's; None when unknown, then at most `max_examples`.
        self.shard_sizes: Sequence[int] | None = None
        self.max_examples = MAX_EXAMPLES
        self.value_bound = float(spec.aggregation.value_bound)
        self._bounds: ValueBounds | None = None
        self._bounds_of: Mapping[str, Tensor] | None = None
        self.local_epochs = spec.training.local_epochs
        #: Updates named by a merge that was not finite: (round, client id, why).
        self.discarded: list[tuple[int, str, str]] = []
        self.round = self._open_round(completed_rounds + 1)
        self._acc: Accumulator = self.strategy.begin(self.global_state, self.expected_clients)

    # -- plan ------------------------------------------------------------------------

    @property
    def expected_clients(self) -> int:
        return self.plan.num_shards

    @property
    def quorum_count(self) -> int:
        return quorum_count(self.quorum, self.expected_clients)

    @property
    def done(self) -> bool:
        return self.completed_rounds >= self.total_rounds

    def expected_specs(self, depth: int) -> dict[str, Spec]:
        """Names, shapes and wire dtypes of the tensors of the depth-`depth` prefix."""
        if depth not in self._expected:
            self._expected[depth] = {
                name: Spec(
                    name,
                    tuple(self.global_state[name].shape),
                    wire_dtype_for(self.global_state[name].dtype, self.compression),
                )
                for name in prefix_keys(self._keys, depth)
            }
        return self._expected[depth]

    def expected_spec_list(self, depth: int) -> list[Spec]:
        """`expected_specs(depth)` as a list, in the order the aggregator sends them; an
        update that lists exactly these specs is valid without a per-tensor check."""
        if depth not in self._expected_list:
            self._expected_list[depth] = list(self.expected_specs(depth).values())
        return self._expected_list[depth]

    def prefix_state(self, depth: int) -> dict[str, Tensor]:
        return {name: self.global_state[name] for name in self.expected_specs(depth)}

    # -- join ------------------------------------------------------------------------

    def join(self, job: str, tier: str, replica: int, depth: int) -> ClientInfo:
        if job != self.plan.name:
            raise Rejected(Reason.WRONG_JOB, f"this aggregator serves job {self.plan.name!r}, not {job!r}")
        try:
            tier_plan: TierPlan = self.plan.tier(tier)
        except KeyError as exc:
            raise Rejected(Reason.UNKNOWN_TIER, str(exc.args[0])) from None
        if not 0 <= replica < tier_plan.replicas:
            raise Rejected(
                Reason.BAD_REPLICA,
                f"replica_index {replica} is out of range for tier {tier!r} (0..{tier_plan.replicas - 1})",
            )
        if depth != tier_plan.depth:
            raise Rejected(
                Reason.DEPTH_MISMATCH,
                f"tier {tier!r} trains depth {tier_plan.depth}, the trainer says {depth}",
            )
        cid = client_id_for(tier, replica)
        info = self.clients.get(cid)
        if info is None:
            info = ClientInfo(cid, tier, replica, depth, self._clock())
            self.clients[cid] = info
        return info

    def client(self, client_id: str) -> ClientInfo:
        info = self.clients.get(client_id)
        if info is None:
            raise Rejected(Reason.UNKNOWN_CLIENT, f"client {client_id!r} has not joined (call Join first)")
        return info

    # -- updates ---------------------------------------------------------------------

    def check_header(self, client_id: str, round_number: int, num_examples: int, specs: list[Spec]) -> ClientInfo:
        """Everything that can be checked before reading the update's bytes."""
        info = self.client(client_id)
        if self.done:
            raise Rejected(Reason.JOB_DONE, "training is complete; no more updates are taken")
        if round_number < self.round.number:
            raise Rejected(
                Reason.STALE_ROUND,
                f"update for round {round_number} arrived after it closed; round {self.round.number} is open: pull the model again",
            )
        if round_number > self.round.number:
            raise Rejected(Reason.FUTURE_ROUND, f"round {round_number} has not opened; round {self.round.number} is open")
        if client_id in self.round.pushed:
            raise Rejected(Reason.DUPLICATE, f"client {client_id!r} already pushed for round {round_number}")
        if isinstance(num_examples, bool) or num_examples <= 0:
            raise Rejected(Reason.BAD_EXAMPLES, f"num_examples must be positive, got {num_examples}")
        if num_examples > (most := self.examples_of(info)):
            raise Rejected(
                Reason.BAD_EXAMPLES,
                f"num_examples {num_examples} is more than the {most} examples client {info.client_id} "
                "can train on (its data shard); the count weighs the update in the merge",
            )
        if specs != self.expected_spec_list(info.depth):
            self._check_tensors(info, specs)
        return self._check_size(info, specs)

    def examples_of(self, info: ClientInfo) -> int:
        """The most examples an update of `info` may count: its shard's size."""
        if self.shard_sizes is None:
            return self.max_examples
        return self.shard_sizes[self.plan.tier(info.tier).shard_offset + info.replica]

    def _check_tensors(self, info: ClientInfo, specs: list[Spec]) -> None:
        """Raise Rejected naming the first tensor in which `specs` differ from the
        prefix of the client's depth."""
        expected = self.expected_specs(info.depth)
        all_specs = self.expected_specs(self.plan.job.spec.model.num_blocks)
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise Rejected(Reason.DUPLICATE_TENSOR, f"tensor {spec.name!r} is sent twice")
            seen.add(spec.name)
            if spec.name not in expected:
                if spec.name in all_specs:
                    raise Rejected(
                        Reason.TOO_DEEP,
                        f"tensor {spec.name!r} lies beyond depth {info.depth} of tier {info.tier!r}",
                    )
                raise Rejected(Reason.UNKNOWN_TENSOR, f"tensor {spec.name!r} is not part of the model")
            want = expected[spec.name]
            if spec.shape != want.shape:
                raise Rejected(
                    Reason.SHAPE_MISMATCH, f"tensor {spec.name!r} has shape {list(spec.shape)}, expected {list(want.shape)}"
                )
            if spec.dtype != want.dtype:
                raise Rejected(
                    Reason.DTYPE_MISMATCH, f"tensor {spec.name!r} has dtype {spec.dtype}, expected {want.dtype}"
                )
        missing = [name for name in expected if name not in seen]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise Rejected(Reason.MISSING_TENSOR, f"tensor {missing[0]!r}{more} of depth {info.depth} is missing")

    def _check_size(self, info: ClientInfo, specs: list[Spec]) -> ClientInfo:
        total = sum(s.num_bytes for s in specs)
        if self.max_update_bytes is not None and total > self.max_update_bytes:
            raise Rejected(Reason.TOO_LARGE, f"update of {total} bytes exceeds the limit {self.max_update_bytes}")
        return info

    def begin_update(self, client_id: str, round_number: int, num_examples: int, specs: list[Spec]) -> UpdateStage:
        """Check an update's header and start receiving it (see :class:`UpdateStage`).
        One update is received at a time; raises Rejected (changing nothing)."""
        info = self.check_header(client_id, round_number, num_examples, specs)
        try:
            staged = self._acc.stage({s.name: (s.shape, s.dtype) for s in specs}, num_examples)
        except MergeError as exc:  # defensive: the header check should have caught it
            raise Rejected(Reason.MERGE_REJECTED, str(exc)) from exc
        return UpdateStage(self, info, round_number, num_examples, specs, staged)

    def fold(self, client_id: str, tensors: Mapping[str, Tensor], num_examples: int, nbytes: int) -> bool:
        """Check and fold an update given as whole tensors (the header is checked here
        too); True when the round is now complete. Nothing changes if it raises."""
        specs = [Spec(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
        stage = self.begin_update(client_id, self.round.number, num_examples, specs)
        try:
            stage.write([(name, 0, t.detach().reshape(-1)) for name, t in tensors.items()], flat=None)
            return stage.commit(nbytes)
        finally:
            stage.abort()

    def record_sent(self, client_id: str, nbytes: int) -> None:
        info = self.client(client_id)
        info.bytes_sent += nbytes
        self.tiers[info.tier].bytes_sent += nbytes

    # -- closing ---------------------------------------------------------------------

    def can_close(self, now: float | None = None) -> bool:
        pushed = len(self.round.pushed)
        if pushed >= self.expected_clients:
            return True
        now = self._clock() if now is None else now
        return now >= self.round.deadline and pushed >= self.quorum_count

    def close_round(self) -> int:
        """Merge the round into the global model and open the next; returns the closed
        round. A merge that is not finite is dropped: the round closes with the previous
        model, and the updates that can have caused it are named (`discarded`)."""
        closed = self.round.number
        finished = self._acc
        retired: dict[str, Tensor] | None = self.global_state
        merged = finished.finish()
        bad = next((k for k, t in merged.items() if t.is_floating_point() and not is_finite(t)), None)
        if bad is not None:
            self.discarded = [(closed, cid, why) for cid, why in self._overflowed(finished, bad)]
            merged, retired = self.global_state, None  # kept, so not scratch memory
        else:
            self.discarded = []
        self.global_state = merged
        self.completed_rounds = closed
        self.round = self._open_round(closed + 1)
        self._acc = self.strategy.begin(self.global_state, self.expected_clients)
        if isinstance(self._acc, LinearAccumulator):
            # The staging buffers of the round just closed, and its model, are the next
            # round's scratch memory: no model-sized allocation (a page fault per 4 KiB)
            # in steady state. Whoever reads a global state must hold it only while it is
            # current (the aggregator serializes it on its worker, which also runs this).
            self._acc.recycle(finished, retired)
        return closed

    def _overflowed(self, acc: Accumulator, tensor: str) -> list[tuple[str, str]]:
        """(client id, why) of the updates that can have made the merge of `tensor` not
        finite: those whose weight times largest magnitude reaches FLOAT32_MAX / k, with
        k the round's updates plus the global model (a sum of k terms each below that
        stays finite, so at least one update is named when a linear merge overflowed);
        every update when none does (another strategy)."""
        updates = self.round.updates
        share = FLOAT32_MAX / (len(updates) + 1)
        named = [
            (cid, f"weight {acc.weight(n):g} x largest magnitude {m:.3g} reaches {share:.3g}")
            for cid, (n, m) in sorted(updates.items())
            if acc.weight(n) * m >= share
        ]
        return named or [(cid, "one of the round's updates") for cid in sorted(updates)]

    @property
    def bounds(self) -> ValueBounds:
        """The value bounds of the open round (relative to its global model)."""
        if self._bounds is None or self._bounds_of is not self.global_state:
            self._bounds = ValueBounds(self.global_state, self.value_bound, self.local_epochs)
            self._bounds_of = self.global_state
        return self._bounds

    def _open_round(self, number: int) -> RoundState:
        now = self._clock()
        return RoundState(number, now, now + self.round_timeout)


class UpdateStage:
    """One update being received, its header already checked: every chunk of its
    payload is cut into tensor pieces (``PayloadPieces``), its values checked, and
    folded into the round's staging sums as it arrives; ``commit`` makes it count.

    Not thread-safe; the aggregator calls it from its one worker thread. Every
    rejection is a ``Rejected`` and leaves the global model and the round unchanged.
    """

    def __init__(
        self, agg: Aggregation, client: ClientInfo, round_number: int, num_examples: int, specs: list[Spec], staged: StagedUpdate
    ) -> None:
        self._agg = agg
        self.client = client
        self.round = round_number
        self.num_examples = num_examples
        self.specs = specs
        self._staged = staged
        self.pieces = PayloadPieces(specs)
        self._bounds = agg.bounds
        #: The largest floating magnitude seen so far.
        self.largest = 0.0

    def feed_all(self, chunks: list[bytes | memoryview]) -> None:
        """Fold the payload's next chunks, in order."""
        for data in chunks:
            self.feed(data)

    def feed(self, data: bytes | memoryview) -> None:
        """Fold the payload's next bytes."""
        try:
            fed = self.pieces.feed(data)
        except WireFormatError as exc:
            self.abort()
            raise Rejected(Reason.TOO_LARGE, str(exc)) from None
        self.write(fed.pieces, fed.float32)

    def write(self, pieces: list[tuple[str, int, Tensor]], flat: Tensor | None) -> None:
        """Check and fold pieces of the update (``ValueBounds``). `flat`, when given,
        holds the pieces' bytes as float32 (``PayloadPieces.feed``): one pass checks
        them, and piece by piece only when it finds something (integer bytes read as
        float32 can look non-finite or large; the per-piece pass decides)."""
        try:
            largest = self._bounds.check(pieces, flat, self.num_examples, self.client.client_id)
        except Rejected:
            self.abort()
            raise
        self.largest = max(self.largest, largest)
        try:
            self._staged.write(pieces, checked_finite=True)
        except NonFiniteError as exc:
            raise Rejected(Reason.NON_FINITE, str(exc)) from None
        except AccumulatorClosed:
            raise self._stale() from None
        except MergeError as exc:
            raise Rejected(Reason.MERGE_REJECTED, str(exc)) from exc

    def _stale(self) -> Rejected:
        return Rejected(
            Reason.STALE_ROUND,
            f"round {self.round} closed while the update arrived; round {self._agg.round.number} is open: pull the model again",
        )

    def commit(self, nbytes: int) -> bool:
        """Count the complete update in its round; True when the round is now complete
        (every expected client pushed)."""
        agg = self._agg
        if agg.round.number != self.round or self._staged.state != "open":
            self.abort()
            raise self._stale()
        try:
            self._staged.commit()
        except AccumulatorClosed:
            raise self._stale() from None
        except MergeError as exc:  # a tensor is incomplete
            raise Rejected(Reason.TRUNCATED, str(exc)) from exc
        info = self.client
        agg.round.pushed.add(info.client_id)
        agg.round.examples += self.num_examples
        agg.round.updates[info.client_id] = (self.num_examples, self.largest)
        info.last_round_pushed = agg.round.number
        info.bytes_received += nbytes
        tier = agg.tiers[info.tier]
        tier.bytes_received += nbytes
        tier.last_round_pushed = agg.round.number
        return len(agg.round.pushed) >= agg.expected_clients

    def abort(self) -> None:
        """Drop the update (idempotent; a committed one stays counted)."""
        self._staged.abort()
