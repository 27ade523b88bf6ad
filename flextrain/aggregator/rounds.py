"""The rounds of one job on the event loop: the round state restored from the newest
checkpoint (or a fresh model), rounds closed when complete or past their deadline
(merge, evaluation, checkpoint, on the worker), pulls woken when a round opens, and the
counters of accepted and refused updates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import torch
from torch import Tensor

from flextrain.aggregator.errors import RefusalLog, Rejected
from flextrain.aggregator.evaluation import Evaluator
from flextrain.aggregator.exports import export_models
from flextrain.aggregator.flow import PushTicket
from flextrain.aggregator.metrics import AggregatorMetrics
from flextrain.aggregator.state import Aggregation, TierCounters
from flextrain.aggregator.store import Checkpoint, CheckpointStore
from flextrain.aggregator.worker import Worker
from flextrain.contract.env import EXPORTS_DIR
from flextrain.contract.refusals import Reason
from flextrain.core.models import ModelSpec
from flextrain.jobplan import JobPlan

log = logging.getLogger("flextrain.aggregator")


def model_spec_of(plan: JobPlan) -> ModelSpec:
    return ModelSpec.for_job(plan.job)


def initial_state(plan: JobPlan) -> dict[str, Tensor]:
    """The round-0 global model, identical for a given job seed."""
    torch.manual_seed(plan.job.spec.dataset.seed)
    model = model_spec_of(plan).build()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Rounds:
    """Opens and closes the rounds of one job; the outcomes of pushes come here
    (``flextrain.aggregator.flow.PushOutcomes``)."""

    def __init__(
        self,
        plan: JobPlan,
        worker: Worker,
        metrics: AggregatorMetrics,
        evaluator: Evaluator,
        store: CheckpointStore | None,
        *,
        on_closed: Callable[[], None] = lambda: None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.evaluator = evaluator
        self._worker = worker
        self._metrics = metrics
        self._on_closed = on_closed
        self.rejections: dict[str, int] = {}
        self._log_refusal = RefusalLog(log)
        self.accepted = 0
        self._changed: asyncio.Condition | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
        self._round_started = time.monotonic()
        self.agg = self._restore_or_start()
        #: Rounds whose merge, evaluation and checkpoint have all finished: what status
        #: reports, so a reader never sees a closed round without its accuracy.
        self.reported_rounds = self.agg.completed_rounds

    def _restore_or_start(self) -> Aggregation:
        checkpoint = self.store.load_latest(self.plan.name) if self.store else None
        if checkpoint is None:
            log.info("starting job %s from a fresh model", self.plan.name, extra={"round": 1})
            return Aggregation(self.plan, initial_state(self.plan))
        if checkpoint.depths != self.plan.depths:
            raise ValueError(
                f"checkpoint depths {checkpoint.depths} differ from the job's {self.plan.depths}; "
                "use a new checkpoint directory for a changed job"
            )
        self.evaluator.history = list(checkpoint.accuracy_history)
        self.rejections = dict(checkpoint.counters.get("rejections", {}))
        self.accepted = int(checkpoint.counters.get("accepted", 0))
        counters = {name: TierCounters(**c) for name, c in checkpoint.tier_counters.items()}
        self._metrics.round.set(checkpoint.completed_rounds)
        log.info(
            "resumed job %s after round %d from %s",
            self.plan.name,
            checkpoint.completed_rounds,
            self.store.path_for(checkpoint.completed_rounds) if self.store else "-",
            extra={"round": checkpoint.completed_rounds + 1},
        )
        return Aggregation(self.plan, checkpoint.global_state, completed_rounds=checkpoint.completed_rounds, tier_counters=counters)

    # -- lifecycle -------------------------------------------------------------------

    def start(self, tick_seconds: float) -> None:
        """Begin watching the open round's deadline (every `tick_seconds`)."""
        self._changed = asyncio.Condition()
        self._round_started = time.monotonic()
        self._ticker = asyncio.create_task(self._tick(tick_seconds), name="round-deadline")

    async def stop(self) -> None:
        """Stop watching and wake every waiting pull."""
        self._closing = True
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._changed:
            async with self._changed:
                self._changed.notify_all()

    async def _tick(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            agg = self.agg
            if not agg.done and agg.round.pushed and agg.can_close():
                log.warning(
                    "round deadline passed with %d of %d updates (quorum %d): closing",
                    len(agg.round.pushed),
                    agg.expected_clients,
                    agg.quorum_count,
                    extra={"round": agg.round.number},
                )
                await self.close()

    async def wait_for(self, min_round: int, seconds: float) -> bool:
        """Wait up to `seconds` until round `min_round` (or a later one) is open, the
        job is done or the aggregator stops; False when the wait ran out first."""
        assert self._changed is not None, "start() first"
        deadline = time.monotonic() + seconds
        async with self._changed:
            while not self.agg.done and self.agg.round.number < min_round and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        return True

    @property
    def reported_done(self) -> bool:
        """Training is over and its last round is fully reported (see reported_rounds)."""
        return self.reported_rounds >= self.agg.total_rounds

    # -- outcomes --------------------------------------------------------------------

    def rejected(self, exc: Rejected) -> None:
        """Count a refusal by its reason."""
        reason = exc.reason.value
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        self._metrics.rejected(exc.reason)
        self._log_refusal(exc)

    async def counted(self, ticket: PushTicket, round_complete: bool) -> None:
        """An update counted in its round; closes the round when it was the last."""
        self.accepted += 1
        self._metrics.received(ticket.client.tier, ticket.expected_bytes)
        log.info(
            "update accepted: %d examples, %d bytes (%d/%d this round)",
            ticket.num_examples,
            ticket.expected_bytes,
            len(self.agg.round.pushed),
            self.agg.expected_clients,
            extra={"client": ticket.client.client_id, "round": ticket.round},
        )
        if round_complete:
            await self.close()

    # -- closing ---------------------------------------------------------------------

    async def close(self) -> None:
        """Close the open round if it can close (on the worker), then wake the pulls."""
        assert self._changed is not None
        closed = await self._worker.run(self._close)
        if closed is None:
            return
        self._on_closed()
        async with self._changed:
            self._changed.notify_all()

    def _close(self) -> int | None:
        agg = self.agg
        if agg.done or not agg.round.pushed or not agg.can_close():
            return None  # another path closed it first
        pushed = len(agg.round.pushed)
        closed = agg.close_round()
        if agg.discarded:
            log.error(
                "round %d: the merge was not finite; the round keeps the previous model and drops its %d updates",
                closed,
                pushed,
                extra={"round": closed},
            )
            for _, client, why in agg.discarded:
                self.rejected(Rejected(Reason.NON_FINITE_MERGE, f"the update of {client} in round {closed} is named: {why}"))
        seconds = time.monotonic() - self._round_started
        self._round_started = time.monotonic()
        self._metrics.rounds_completed.inc()
        self._metrics.round_seconds.observe(seconds)
        self._metrics.round.set(closed)
        spec = self.plan.job.spec
        last = closed >= agg.total_rounds
        if last or closed % spec.aggregation.evaluate_every_rounds == 0:
            self.evaluator.evaluate(agg.global_state, closed)
        every = spec.checkpoint.every_rounds if spec.checkpoint else 1
        if self.store and (last or closed % every == 0):
            checkpoint = self.checkpoint()
            self.store.save(checkpoint)
            if last:  # beside the checkpoints: what status.model.exports points to
                exports = export_models(self.plan, checkpoint, model_spec_of(self.plan), self.store.directory / EXPORTS_DIR)
                log.info("exported %d sub-models to %s", len(exports), self.store.directory / EXPORTS_DIR, extra={"round": closed})
        latest = self.evaluator.of_round(closed)
        log.info(
            "round %d closed: %d/%d updates merged in %.2fs%s",
            closed,
            pushed,
            agg.expected_clients,
            seconds,
            "; accuracy " + ", ".join(f"depth {d}: {a:.3f}" for d, a in sorted(latest.items())) if latest else "",
            extra={"round": closed},
        )
        if last:
            log.info("training complete after %d rounds", closed, extra={"round": closed})
        self.reported_rounds = closed
        return closed

    def checkpoint(self) -> Checkpoint:
        agg = self.agg
        return Checkpoint(
            job=self.plan.name,
            completed_rounds=agg.completed_rounds,
            strategy=self.plan.job.spec.aggregation.strategy,
            global_state=agg.global_state,
            depths=self.plan.depths,
            tier_counters={name: vars(c).copy() for name, c in agg.tiers.items()},
            accuracy_history=list(self.evaluator.history),
            counters={"rejections": dict(self.rejections), "accepted": self.accepted},
        )


