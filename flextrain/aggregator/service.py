"""The aggregator service: one job's aggregator on an asyncio event loop, without any
gRPC. The servicer (``flextrain.aggregator.servicer``) is a thin shim over the public
methods of `AggregatorService`, which take and return plain values (the protocol's
messages of ``flextrain.wire.messages``, specs, chunks).

Behind it: the rounds (``rounds``: opening, closing, counters, checkpoints; the round
state and checks in ``state``), flow control (``flow``: pushes received one at a time
and folded as they arrive, pulls sending in turn), the serialized model for pulls
(``prefixes``), evaluation (``evaluation``), all heavy work on one worker thread
(``worker``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from flextrain.aggregator.errors import Rejected
from flextrain.aggregator.evaluation import Evaluator
from flextrain.aggregator.flow import (
    PULL_CHUNKS_IN_FLIGHT,
    PULL_SLOT_LEASE_SECONDS,
    PushLine,
    PushStream,
    PushTicket,
    PushTimeouts,
    SendSlots,
    send_in_turn,
)
from flextrain.aggregator.metrics import AggregatorMetrics
from flextrain.aggregator.prefixes import ModelFrames, Superseded
from flextrain.aggregator.rounds import Rounds, model_spec_of
from flextrain.aggregator.shards import shard_sizes
from flextrain.aggregator.state import MAX_EXAMPLES
from flextrain.aggregator.store import CheckpointStore
from flextrain.aggregator.worker import Worker
from flextrain.contract.refusals import Reason
from flextrain.core import losses
from flextrain.core.models import ModelSpec
from flextrain.jobplan import JobPlan, TierPlan
from flextrain.wire.messages import DataAssignment, Joined, ModelDescription, TrainingConfig
from flextrain.wire.status import AggregatorStatus, TierStatus
from flextrain.wire.tensors import Framed, Spec

log = logging.getLogger("flextrain.aggregator")


@dataclass
class Settings:
    """Process settings of an aggregator (the job itself comes from the JobPlan)."""

    #: Directory of round checkpoints; None keeps no checkpoints (not resumable).
    checkpoint_dir: Path | None = None
    #: Dataset directory for the held-out evaluation (built-in datasets need none).
    data_dir: Path | None = None
    #: Longest a PullModel call waits for the next round, in seconds.
    max_wait_seconds: float = 30.0
    #: Held-out examples per evaluation batch.
    eval_batch_size: int = 512
    #: Seconds between deadline checks of the open round.
    tick_seconds: float = 0.25
    #: torch device for evaluation ("cpu" or "cuda").
    device: str = "cpu"
    #: torch threads for evaluation; None leaves the process's setting. (The aggregator
    #: process merges with one thread, see flextrain.aggregator.main, and evaluates
    #: with these.)
    eval_threads: int | None = None
    #: Checkpoints kept on disk.
    keep_checkpoints: int = 2
    #: The most examples an update may count when the training data cannot be read
    #: here to know each shard's size (which bounds it otherwise).
    max_examples: int = MAX_EXAMPLES
    #: How long a push may wait for its client's bytes (idle timeout, minimum rate).
    push_timeouts: PushTimeouts = field(default_factory=PushTimeouts)


@dataclass
class PullResult:
    """What a pull gets: the round's model prefix when `ready`."""

    ready: bool
    done: bool
    round: int
    encoded: Framed | None = None


class AggregatorService:
    """One job's aggregator.

    The servicer's API: `join`, `pull`, `send`, `expected_update`, `begin_push`,
    `receive_push`, `refusal`, `status`, `start`, `stop`, `name`, `push_timeouts`,
    `model_tensors`, `tier_names`. The parts behind it
    (`rounds`, `agg`, `models`, `evaluator`) are attributes for tests and tools.
    """

    def __init__(self, plan: JobPlan, settings: Settings | None = None, metrics: AggregatorMetrics | None = None) -> None:
        self.plan = plan
        self.settings = s = settings or Settings()
        self.metrics = metrics or AggregatorMetrics(plan.name)
        self.model_spec = model_spec_of(plan)
        self._worker = Worker()
        self.evaluator = Evaluator(
            plan,
            self.model_spec,
            self.metrics,
            data_dir=s.data_dir,
            batch_size=s.eval_batch_size,
            device=s.device,
            threads=s.eval_threads,
        )
        store = CheckpointStore(s.checkpoint_dir, s.keep_checkpoints) if s.checkpoint_dir else None
        self.rounds = Rounds(plan, self._worker, self.metrics, self.evaluator, store, on_closed=self._round_closed)
        self.agg = self.rounds.agg
        # An update counts at most its sender's shard of examples (the merge's weight).
        self.agg.shard_sizes = shard_sizes(plan, s.data_dir)
        self.agg.max_examples = s.max_examples
        clients_at_depth: dict[int, int] = {}
        for tier in plan.tiers:
            clients_at_depth[tier.depth] = clients_at_depth.get(tier.depth, 0) + tier.replicas
        self.models = ModelFrames(self.agg, self._worker, clients_at_depth)
        self._pushes: PushLine | None = None
        self._send_slots: SendSlots | None = None

    def _round_closed(self) -> None:
        self.models.drop()

    @property
    def name(self) -> str:
        """The job's name."""
        return self.plan.name

    @property
    def tier_names(self) -> list[str]:
        """The job's tiers: the only ones a replica credential may name."""
        return [tier.name for tier in self.plan.tiers]

    @property
    def push_timeouts(self) -> PushTimeouts:
        return self.settings.push_timeouts

    @property
    def model_tensors(self) -> int:
        """Tensors in the whole model: the most an update header may list."""
        return len(self.agg.global_state)

    async def start(self) -> None:
        self._pushes = PushLine(self._worker, self.rounds, self.settings.push_timeouts)
        self._send_slots = SendSlots(PULL_CHUNKS_IN_FLIGHT, PULL_SLOT_LEASE_SECONDS)
        self.rounds.start(self.settings.tick_seconds)

    async def stop(self) -> None:
        await self.rounds.stop()
        self._worker.shutdown()

    # -- Join ------------------------------------------------------------------------

    def join(self, job: str, tier: str, replica: int, depth: int) -> Joined:
        """Register a trainer replica (again: the same client id); raises Rejected."""
        try:
            client = self.agg.join(job, tier, replica, depth)
        except Rejected as exc:
            self.rounds.rejected(exc)
            raise
        self.metrics.clients_connected.set(len(self.agg.clients))
        tier_plan = self.plan.tier(tier)
        log.info("client joined: tier %s replica %d depth %d", tier, replica, depth, extra={"client": client.client_id, "round": self.agg.round.number})
        return Joined(
            client_id=client.client_id,
            round=self.agg.round.number,
            total_rounds=self.agg.total_rounds,
            done=self.agg.done,
            model=_model_description(self.model_spec, depth),
            data=_data_assignment(self.plan, tier_plan, replica),
            training=_training_config(self.plan, tier_plan, self.agg.compression),
        )

    # -- PullModel -------------------------------------------------------------------

    async def pull(self, client_id: str, min_round: int, wait_seconds: float) -> PullResult:
        """The model prefix of the caller's depth once round `min_round` (or later) is
        open, waiting up to `wait_seconds` (capped); raises Rejected."""
        client = self.agg.client(client_id)
        wait = max(0.0, min(wait_seconds, self.settings.max_wait_seconds))
        if not await self.rounds.wait_for(min_round, wait):
            return PullResult(ready=False, done=False, round=self.agg.round.number)
        while True:
            if self.agg.done:
                return PullResult(ready=False, done=True, round=self.agg.round.number)
            number = self.agg.round.number
            try:
                encoded = await self.models.prefix(number, client.depth)
                break
            except Superseded:
                continue  # the round closed before its model was serialized: the next one
        self.models.served(number, client.depth, client_id)
        self.agg.record_sent(client_id, encoded.nbytes)
        self.metrics.sent(client.tier, encoded.nbytes)
        return PullResult(ready=True, done=False, round=number, encoded=encoded)

    def send(self, encoded: Framed) -> AsyncIterator[bytes]:
        """The data chunks of a pulled model, each yielded while it holds a send slot
        (``flextrain.aggregator.flow.SendSlots``): send it before asking for the next."""
        assert self._send_slots is not None, "start() first"
        return send_in_turn(self._send_slots, encoded.frames)

    # -- PushUpdate ------------------------------------------------------------------

    def expected_update(self, client_id: str) -> tuple[int, list[Spec]] | None:
        """(depth, the specs of its tensors in the order they are sent) of a joined
        client's update; None for an unknown client. An update that lists exactly
        these is valid without a per-tensor check."""
        client = self.agg.clients.get(client_id)
        return None if client is None else (client.depth, self.agg.expected_spec_list(client.depth))

    def begin_push(self, client_id: str, round_number: int, num_examples: int, specs: list[Spec]) -> PushTicket:
        """Check an update's header; raises Rejected before any byte is read."""
        try:
            client = self.agg.check_header(client_id, round_number, num_examples, specs)
        except Rejected as exc:
            self.rounds.rejected(exc)
            raise
        return PushTicket(client, round_number, num_examples, specs, sum(s.num_bytes for s in specs))

    @contextlib.asynccontextmanager
    async def receive_push(
        self, ticket: PushTicket, send: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[PushStream]:
        """Receive one update: waits its turn, then yields the stream to ``feed`` its
        chunks to and ``finish`` (``flextrain.aggregator.flow.PushLine.receive``;
        `send` tells the client to send its data)."""
        assert self._pushes is not None, "start() first"
        begin = partial(self.agg.begin_update, ticket.client.client_id, ticket.round, ticket.num_examples, ticket.specs)
        async with self._pushes.receive(ticket, begin, send) as push:
            yield push

    # -- refusals and status ---------------------------------------------------------

    def refusal(self, reason: Reason, message: str) -> Rejected:
        """A refusal the servicer raises itself (token, malformed stream), counted."""
        exc = Rejected(reason, message)
        self.rounds.rejected(exc)
        return exc

    def status(self) -> AggregatorStatus:
        """What GetStatus reports: a closed round only once its evaluation and
        checkpoint are done."""
        agg, rounds = self.agg, self.rounds
        tiers = []
        for tier in self.plan.tiers:
            clients = [c for c in agg.clients.values() if c.tier == tier.name]
            counters = agg.tiers[tier.name]
            tiers.append(
                TierStatus(
                    tier=tier.name,
                    depth=tier.depth,
                    replicas=tier.replicas,
                    joined=len(clients),
                    pushed_this_round=sum(1 for c in clients if c.client_id in agg.round.pushed),
                    last_round_pushed=counters.last_round_pushed,
                    bytes_received=counters.bytes_received,
                    bytes_sent=counters.bytes_sent,
                )
            )
        return AggregatorStatus(
            job=self.plan.name,
            round=rounds.reported_rounds,
            total_rounds=agg.total_rounds,
            done=rounds.reported_done,
            tiers=tiers,
            accuracy=self.evaluator.latest(),
            rejected=dict(rounds.rejections),
            accepted=rounds.accepted,
            clients_connected=len(agg.clients),
            round_deadline_unix=agg.round.deadline,
            round_started_unix=agg.round.opened_at,
        )


def _model_description(m: ModelSpec, depth: int) -> ModelDescription:
    arch = m.profile()
    return ModelDescription(
        m.family, m.layers, m.num_classes, m.in_channels, m.image_size, m.num_blocks,
        num_parameters=arch.parameters(arch.num_blocks),
        prefix_parameters=arch.parameters(depth),
        options=dict(m.options),
    )


def _data_assignment(plan: JobPlan, tier: TierPlan, replica: int) -> DataAssignment:
    data = plan.job.spec.dataset
    return DataAssignment(
        dataset=data.name,
        scheme=data.partition.scheme,
        alpha=data.partition.alpha or 0.0,
        seed=data.seed,
        shard_index=tier.shard_offset + replica,
        num_shards=plan.num_shards,
        limit=data.limit or 0,
    )


def _training_config(plan: JobPlan, tier: TierPlan, wire_dtype: torch.dtype) -> TrainingConfig:
    training = plan.job.spec.training
    return TrainingConfig(
        local_epochs=training.local_epochs,
        batch_size=training.batch_size,
        optimizer=training.optimizer.name,
        learning_rate=training.optimizer.learning_rate,
        momentum=training.optimizer.momentum,
        weight_decay=training.optimizer.weight_decay,
        distillation_beta=training.distillation.beta,
        distillation_target=training.distillation.target,
        distill=tier.depth > plan.weakest_depth,
        wire_dtype=wire_dtype,
        anchor_depths=anchor_depths(plan, tier),
        anchor_loss=training.distillation.anchor.loss,
    )


def anchor_depths(plan: JobPlan, tier: TierPlan) -> tuple[int, ...]:
    """The tier depths below ``tier``'s whose prefixes its devices also train
    (``spec.training.distillation.anchor``); empty when the option is off."""
    anchor = plan.job.spec.training.distillation.anchor
    if anchor.loss == "none":
        return ()
    return losses.anchor_depths((t.depth for t in plan.tiers), tier.depth, anchor.tiers)
