"""The aggregator service: rounds, merge, evaluation, checkpoints and status, on an
asyncio event loop but without any gRPC (the servicer is a thin shim over this).

Concurrency: the event loop only does bookkeeping. Decoding, value checks, folding,
merging, evaluation and checkpoint writes run on ONE worker thread, so they are
serialised without locks and the loop keeps serving PullModel / GetStatus meanwhile.

Pushes are received one at a time (``receive_push``), the others wait before sending
their data: each chunk of the one being received goes to the worker as it arrives and
is folded into the round's staging sums there while the next chunk is on its way, and
the update counts when its last chunk is in (``flextrain.aggregator.state.UpdateStage``).
No payload is ever assembled: memory is the model, the running sums and their staging
copy, and a few chunks in flight, whatever the number of clients. Pulls take turns
sending their chunks (``SendSlots``), so that gRPC's copies of them do not grow with
the number of clients either.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flextrain.aggregator.errors import Kind, Rejected
from flextrain.aggregator.metrics import AggregatorMetrics
from flextrain.aggregator.state import Aggregation, ClientInfo, TierCounters, UpdateStage
from flextrain.aggregator.store import Checkpoint, CheckpointStore
from flextrain.core.centralised import evaluate
from flextrain.core.models import ModelSpec
from flextrain.jobplan import JobPlan
from flextrain.wire.tensors import Framed, Spec, frame_views, tensor_views

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


#: Updates up to this size are told to send as soon as they are next in line (see
#: ``AggregatorService.receive_push``); larger ones when their turn comes, so that a
#: waiting push never holds more than a small update's worth of data here.
EARLY_SEND_BYTES = 8 * 1024 * 1024

#: Model chunks being sent at once, over all pulls (see ``SendSlots``).
PULL_CHUNKS_IN_FLIGHT = 8
#: How long a chunk may hold its slot before the slot goes to the next one.
PULL_SLOT_LEASE_SECONDS = 2.0


@dataclass
class JoinInfo:
    client: ClientInfo
    round: int
    total_rounds: int
    done: bool
    model: ModelSpec
    num_parameters: int
    prefix_parameters: int
    shard_index: int
    num_shards: int
    distill: bool


@dataclass
class PullResult:
    ready: bool
    done: bool
    round: int
    encoded: Framed | None = None


@dataclass
class PushTicket:
    client: ClientInfo
    round: int
    num_examples: int
    specs: list[Spec]
    expected_bytes: int
    started: float = field(default_factory=time.monotonic)


def model_spec_of(plan: JobPlan) -> ModelSpec:
    return ModelSpec.for_job(plan.job)


def initial_state(plan: JobPlan) -> dict[str, Tensor]:
    """The round-0 global model, identical for a given job seed."""
    torch.manual_seed(plan.job.spec.dataset.seed)
    model = model_spec_of(plan).build()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class AggregatorService:
    """One job's aggregator."""

    def __init__(self, plan: JobPlan, settings: Settings | None = None, metrics: AggregatorMetrics | None = None) -> None:
        self.plan = plan
        self.settings = settings or Settings()
        self.metrics = metrics or AggregatorMetrics(plan.name)
        self.model_spec = model_spec_of(plan)
        self.store = CheckpointStore(self.settings.checkpoint_dir, self.settings.keep_checkpoints) if self.settings.checkpoint_dir else None
        self.accuracy_history: list[dict[str, Any]] = []
        self.rejections: dict[str, int] = {}
        self.accepted = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggregator")
        self._changed: asyncio.Condition | None = None
        self._push_slot: asyncio.Lock | None = None
        self._next_in_line: asyncio.Semaphore | None = None
        self.send_slots: SendSlots | None = None
        self._encoded: dict[tuple[int, int], asyncio.Future[Framed]] = {}
        self._model_views: tuple[dict[str, Tensor], dict[str, tuple[Spec, memoryview]]] | None = None
        self._served: dict[tuple[int, int], set[str]] = {}
        self._clients_at_depth: dict[int, int] = {}
        for tier in plan.tiers:
            self._clients_at_depth[tier.depth] = self._clients_at_depth.get(tier.depth, 0) + tier.replicas
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
        self._eval_loader: Any = None
        self._round_started = time.monotonic()
        self.agg = self._restore_or_start()
        #: Rounds whose merge, evaluation and checkpoint have all finished: what status
        #: reports, so a reader never sees a closed round without its accuracy.
        self.reported_rounds = self.agg.completed_rounds

    # -- lifecycle -------------------------------------------------------------------

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
        self.accuracy_history = list(checkpoint.accuracy_history)
        self.rejections = dict(checkpoint.counters.get("rejections", {}))
        self.accepted = int(checkpoint.counters.get("accepted", 0))
        counters = {name: TierCounters(**c) for name, c in checkpoint.tier_counters.items()}
        self.metrics.round.set(checkpoint.completed_rounds)
        log.info(
            "resumed job %s after round %d from %s",
            self.plan.name,
            checkpoint.completed_rounds,
            self.store.path_for(checkpoint.completed_rounds) if self.store else "-",
            extra={"round": checkpoint.completed_rounds + 1},
        )
        return Aggregation(self.plan, checkpoint.global_state, completed_rounds=checkpoint.completed_rounds, tier_counters=counters)

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        self._push_slot = asyncio.Lock()
        self._next_in_line = asyncio.Semaphore(2)  # the push being received, and the next
        self.send_slots = SendSlots(PULL_CHUNKS_IN_FLIGHT, PULL_SLOT_LEASE_SECONDS)
        self._round_started = time.monotonic()
        self._ticker = asyncio.create_task(self._tick(), name="round-deadline")

    async def stop(self) -> None:
        self._closing = True
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._changed:
            async with self._changed:
                self._changed.notify_all()
        self._executor.shutdown(wait=True)

    def _run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        """Queue `fn(*args)` on the worker thread now; await the future for its result."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_seconds)
            if not self.agg.done and self.agg.round.pushed and self.agg.can_close():
                log.warning(
                    "round deadline passed with %d of %d updates (quorum %d): closing",
                    len(self.agg.round.pushed),
                    self.agg.expected_clients,
                    self.agg.quorum_count,
                    extra={"round": self.agg.round.number},
                )
                await self._close_round()

    # -- RPC bodies ------------------------------------------------------------------

    def join(self, job: str, tier: str, replica: int, depth: int) -> JoinInfo:
        try:
            client = self.agg.join(job, tier, replica, depth)
        except Rejected as exc:
            self._count_rejection(exc)
            raise
        self.metrics.clients_connected.set(len(self.agg.clients))
        arch = self.model_spec.profile()
        tier_plan = self.plan.tier(tier)
        log.info("client joined: tier %s replica %d depth %d", tier, replica, depth, extra={"client": client.client_id, "round": self.agg.round.number})
        return JoinInfo(
            client=client,
            round=self.agg.round.number,
            total_rounds=self.agg.total_rounds,
            done=self.agg.done,
            model=self.model_spec,
            num_parameters=arch.parameters(arch.num_blocks),
            prefix_parameters=arch.parameters(depth),
            shard_index=tier_plan.shard_offset + replica,
            num_shards=self.plan.num_shards,
            distill=tier_plan.depth > self.plan.weakest_depth,
        )

    async def pull(self, client_id: str, min_round: int, wait_seconds: float) -> PullResult:
        assert self._changed is not None, "start() first"
        client = self.agg.client(client_id)
        wait = max(0.0, min(wait_seconds, self.settings.max_wait_seconds))
        deadline = time.monotonic() + wait
        async with self._changed:
            while not self.agg.done and self.agg.round.number < min_round and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return PullResult(ready=False, done=False, round=self.agg.round.number)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        while True:
            if self.agg.done:
                return PullResult(ready=False, done=True, round=self.agg.round.number)
            number = self.agg.round.number
            try:
                encoded = await self._encoded_prefix(number, client.depth)
                break
            except _Superseded:
                continue  # the round closed before its model was serialized: the next one
        served = self._served.setdefault((number, client.depth), set())
        served.add(client_id)
        if len(served) >= self._clients_at_depth[client.depth]:
            # Every client of this depth has it: free the cache (the pulls still
            # sending it hold their own reference; a retried pull serializes again).
            self._encoded.pop((number, client.depth), None)
        self.agg.record_sent(client_id, encoded.nbytes)
        self.metrics.sent(client.tier, encoded.nbytes)
        return PullResult(ready=True, done=False, round=number, encoded=encoded)

    async def _encoded_prefix(self, number: int, depth: int) -> Framed:
        """The depth-`depth` prefix of round `number`'s model, serialized once per round
        and shared by every pull of that depth (also by pulls that arrive meanwhile)."""
        key = (number, depth)
        pending = self._encoded.get(key)
        if pending is None:
            # Both taken now: a round that closes meanwhile replaces the global state.
            model, names = self.agg.global_state, list(self.agg.expected_specs(depth))
            pending = self._run(self._frame, number, model, names)
            self._encoded = {k: v for k, v in self._encoded.items() if k[0] == number}
            self._encoded[key] = pending
        try:
            # shield: a caller that gives up must not cancel the encode the others await
            return await asyncio.shield(pending)
        except Exception:
            if self._encoded.get(key) is pending:
                del self._encoded[key]  # let the next pull try again
            raise

    def _frame(self, number: int, model: dict[str, Tensor], names: list[str]) -> Framed:
        """Serialize the `names` prefix of `model`, the global state of round `number`.
        The raw views of the whole model are taken once and shared by every depth's
        prefix. Raises _Superseded when that round has closed meanwhile: a closed round's
        model is handed to the next round's merge as scratch memory (see
        ``Aggregation.close_round``), so it is only read while it is current (this runs
        on the worker, as the close does)."""
        if self.agg.round.number != number or self.agg.global_state is not model:
            raise _Superseded(number)
        cached = self._model_views
        if cached is None or cached[0] is not model:
            specs, views = tensor_views(model, self.agg.compression)
            cached = (model, {s.name: (s, v) for s, v in zip(specs, views, strict=True)})
            self._model_views = cached
        picked = [cached[1][name] for name in names]
        return frame_views([s for s, _ in picked], [v for _, v in picked])

    def begin_push(self, client_id: str, round_number: int, num_examples: int, specs: list[Spec]) -> PushTicket:
        """Check an update's header; raises Rejected before any byte is read."""
        try:
            client = self.agg.check_header(client_id, round_number, num_examples, specs)
        except Rejected as exc:
            self._count_rejection(exc)
            raise
        return PushTicket(client, round_number, num_examples, specs, sum(s.num_bytes for s in specs))

    @contextlib.asynccontextmanager
    async def receive_push(
        self, ticket: PushTicket, send: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[PushStream]:
        """Receive one update: waits its turn (one push is received at a time), then
        yields the stream to ``feed`` its chunks to and ``finish``. Leaving without
        finishing (a rejection, a client that went away) drops the update.

        `send` tells the push's client to send its data (the servicer's initial
        metadata). It is awaited when the push's turn comes or, for an update of at most
        ``EARLY_SEND_BYTES``, as soon as it is next in line: a small update is then on
        its way while the one before it finishes, instead of costing a round trip of
        its own (while it waits, flow control holds back at most one stream's window).
        """
        assert self._push_slot is not None and self._next_in_line is not None, "start() first"
        early = ticket.expected_bytes <= EARLY_SEND_BYTES
        async with self._next_in_line:
            if send is not None and early:
                await send()
            async with self._push_slot:
                if send is not None and not early:
                    await send()
                begun = self._executor.submit(
                    self.agg.begin_update, ticket.client.client_id, ticket.round, ticket.num_examples, ticket.specs
                )
                try:
                    stage = await asyncio.wrap_future(begun)
                except Rejected as exc:  # the round closed while the push waited its turn
                    self._count_rejection(exc)
                    raise
                except asyncio.CancelledError:
                    # The client went away while its stage was being begun: the worker
                    # may still begin it, so drop it there, right behind (before the
                    # next push's stage).
                    self._executor.submit(_abort_begun, begun)
                    raise
                push = PushStream(self, ticket, stage)
                try:
                    yield push
                finally:
                    # Queued behind the chunks still being folded (one worker, in
                    # order): the next push's stage can only begin after it.
                    push.close()

    def _accepted(self, ticket: PushTicket) -> None:
        self.accepted += 1
        self.metrics.received(ticket.client.tier, ticket.expected_bytes)
        log.info(
            "update accepted: %d examples, %d bytes (%d/%d this round)",
            ticket.num_examples,
            ticket.expected_bytes,
            len(self.agg.round.pushed),
            self.agg.expected_clients,
            extra={"client": ticket.client.client_id, "round": ticket.round},
        )

    def reject_payload(self, exc: Rejected) -> None:
        self._count_rejection(exc)

    async def _close_round(self) -> None:
        assert self._changed is not None
        closed = await self._run(self._close_round_sync)
        if closed is None:
            return
        # The closed round's serialized model goes now (pulls still sending it keep
        # their reference), not when the next round's first pull replaces it.
        self._encoded, self._served = {}, {}
        self._model_views = None
        async with self._changed:
            self._changed.notify_all()

    def _close_round_sync(self) -> int | None:
        agg = self.agg
        if agg.done or not agg.round.pushed or not agg.can_close():
            return None  # another path closed it first
        pushed = len(agg.round.pushed)
        closed = agg.close_round()
        seconds = time.monotonic() - self._round_started
        self._round_started = time.monotonic()
        self.metrics.rounds_completed.inc()
        self.metrics.round_seconds.observe(seconds)
        self.metrics.round.set(closed)
        spec = self.plan.job.spec
        last = closed >= agg.total_rounds
        if last or closed % spec.aggregation.evaluate_every_rounds == 0:
            self._evaluate(closed)
        every = spec.checkpoint.every_rounds if spec.checkpoint else 1
        if self.store and (last or closed % every == 0):
            self.store.save(self.checkpoint())
        latest = {a["depth"]: a["accuracy"] for a in self.accuracy_history if a["round"] == closed}
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

    def _eval_batches(self) -> Any:
        if self._eval_loader is None:
            from flextrain.data import load_dataset, make_loader

            ds = self.plan.job.spec.dataset
            splits = load_dataset(ds.name, self.settings.data_dir, seed=ds.seed, limit=ds.limit)
            self._eval_loader = make_loader(splits.test, batch_size=self.settings.eval_batch_size)
        return self._eval_loader

    def _evaluate(self, closed: int) -> None:
        threads = self.settings.eval_threads
        merging = torch.get_num_threads()
        if threads and threads != merging:
            torch.set_num_threads(threads)
        try:
            self._evaluate_depths(closed)
        finally:
            if threads and threads != merging:
                torch.set_num_threads(merging)

    def _evaluate_depths(self, closed: int) -> None:
        model = self.model_spec.build()
        model.load_state_dict(self.agg.global_state)
        model.to(self.settings.device)
        depths = sorted({t.depth for t in self.plan.tiers})
        accuracy = evaluate(model, self._eval_batches(), depths, self.settings.device)
        for depth, acc in accuracy.items():
            self.accuracy_history.append({"round": closed, "depth": depth, "accuracy": acc})
            self.metrics.set_accuracy(depth, acc)

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            job=self.plan.name,
            completed_rounds=self.agg.completed_rounds,
            strategy=self.plan.job.spec.aggregation.strategy,
            global_state=self.agg.global_state,
            depths=self.plan.depths,
            tier_counters={name: vars(c).copy() for name, c in self.agg.tiers.items()},
            accuracy_history=list(self.accuracy_history),
            counters={"rejections": dict(self.rejections), "accepted": self.accepted},
        )

    def _count_rejection(self, exc: Rejected) -> None:
        self.rejections[exc.reason] = self.rejections.get(exc.reason, 0) + 1
        self.metrics.rejected(exc.reason)
        log.warning("rejected (%s): %s", exc.reason, exc)

    # -- status ----------------------------------------------------------------------

    @property
    def reported_done(self) -> bool:
        """Training is over and its last round is fully reported (see reported_rounds)."""
        return self.reported_rounds >= self.agg.total_rounds

    def latest_accuracy(self) -> dict[int, tuple[float, int]]:
        """depth -> (accuracy, round) of the latest evaluation of each depth."""
        out: dict[int, tuple[float, int]] = {}
        for entry in self.accuracy_history:
            out[int(entry["depth"])] = (float(entry["accuracy"]), int(entry["round"]))
        return out

    def tier_rows(self) -> Iterator[dict[str, Any]]:
        for tier in self.plan.tiers:
            clients = [c for c in self.agg.clients.values() if c.tier == tier.name]
            counters = self.agg.tiers[tier.name]
            yield {
                "tier": tier.name,
                "depth": tier.depth,
                "replicas": tier.replicas,
                "joined": len(clients),
                "pushed_this_round": sum(1 for c in clients if c.client_id in self.agg.round.pushed),
                "last_round_pushed": counters.last_round_pushed,
                "bytes_received": counters.bytes_received,
                "bytes_sent": counters.bytes_sent,
            }


class SendSlots:
    """Bounds the model chunks that all pulls together are sending at once, and serves
    the pulls in the order they began.

    gRPC copies each message it sends and holds the copy until the transport has taken
    it, so N pulls sending at once hold about N chunks: memory that grows with the
    number of clients (about 1.5 MiB a client with a 53 MB model: docs/aggregator.md).
    A pull takes a slot for each chunk (``async with slots.slot(order): yield chunk``;
    the servicer's next chunk is asked for only once the last one was sent) and gives
    it back when the chunk is out.

    A free slot goes to the waiting chunk of the pull that began first (``order``, from
    ``next_order``): with S slots, the S oldest pulls send side by side and a later one
    starts when one of them ends. The first clients of a round get their model after
    a fraction of the time it takes to serve them all, instead of all of them at the
    end, and start training (or, without training, pushing) while the rest still pull.

    A slot is leased, not owned: a chunk that holds it longer than ``lease_seconds``
    (a client that stopped reading, so that its flow-control window stays full) loses
    it to the next chunk. A stalled client therefore slows the others by one lease at a
    time at most and holds at most its one chunk.
    """

    def __init__(self, slots: int, lease_seconds: float) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self._slots = slots
        self._lease = lease_seconds
        self._held = 0
        self._orders = itertools.count()
        self._arrivals = itertools.count()  # ties in order: first come, first served
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        #: Leases that timed out (their chunk kept going without a slot).
        self.expired = 0

    @property
    def free(self) -> int:
        """Slots nobody holds now."""
        return self._slots - self._held

    def next_order(self) -> int:
        """The place of a pull that begins now: after every pull that began before."""
        return next(self._orders)

    async def _acquire(self, order: int) -> None:
        if self._held < self._slots and not self._waiting:
            self._held += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (order, next(self._arrivals), waiter))
        try:
            await waiter  # resolved by _release, which passes its slot on
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, waiter = heapq.heappop(self._waiting)
            if not waiter.done():  # skip waiters that were cancelled
                waiter.set_result(None)  # the slot goes to it: _held is unchanged
                return
        self._held -= 1

    @contextlib.asynccontextmanager
    async def slot(self, order: int = 0) -> AsyncIterator[None]:
        """Hold a slot while the block sends one chunk of the pull with place `order`."""
        await self._acquire(order)
        held = True

        def give_back(expired: bool) -> None:
            nonlocal held
            if held:
                held = False
                self._release()
                self.expired += expired

        timer = asyncio.get_running_loop().call_later(self._lease, give_back, True)
        try:
            yield
        finally:
            timer.cancel()
            give_back(False)


class _Superseded(Exception):
    """The round whose model a pull wanted to serialize has closed."""


class PushStream:
    """The update of one push, folded on the worker as its chunks arrive (see
    ``AggregatorService.receive_push``)."""

    #: Chunks handed to the worker at once. Each hand-off costs about 0.1 ms of CPU
    #: (two thread wake-ups), as much as folding a quarter of a chunk.
    BATCH = 4
    #: Batches handed to the worker and not yet folded before ``feed`` waits for it.
    #: Received bytes held: at most (MAX_PENDING + 1) x BATCH chunks (16 MiB).
    MAX_PENDING = 1

    def __init__(self, service: AggregatorService, ticket: PushTicket, stage: UpdateStage) -> None:
        self._service = service
        self.ticket = ticket
        self._stage = stage
        self._pending: deque[asyncio.Future[None]] = deque()
        self._batch: list[bytes | memoryview] = []
        #: Payload bytes received so far.
        self.received = 0
        self._finished = False

    async def _settle(self, limit: int) -> None:
        """Wait for folds until at most `limit` are pending (and collect the finished
        ones); a rejection of any of them is raised here, counted."""
        pending = self._pending
        while pending and (len(pending) > limit or pending[0].done()):
            try:
                await pending.popleft()
            except Rejected as exc:
                self._service._count_rejection(exc)
                raise

    async def feed(self, data: bytes | memoryview) -> None:
        """The payload's next bytes: checked for size here, folded on the worker."""
        expected = self.ticket.expected_bytes
        if self.received + len(data) > expected:
            exc = Rejected(Kind.EXHAUSTED, "too_large", f"update carries more than the {expected} bytes its header describes")
            self._service._count_rejection(exc)
            raise exc
        self.received += len(data)
        self._batch.append(data)
        if len(self._batch) >= self.BATCH:
            await self._hand_off()

    async def _hand_off(self) -> None:
        batch, self._batch = self._batch, []
        self._pending.append(self._service._run(self._stage.feed_all, batch))
        await self._settle(self.MAX_PENDING)

    async def finish(self) -> int:
        """Count the complete update; returns the round it was counted in.

        The commit runs on in the worker if the client goes away meanwhile; an update it
        counted is then fully accounted (and closes its round) before the cancellation
        goes through.
        """
        service, ticket = self._service, self.ticket
        if self.received != ticket.expected_bytes:
            exc = invalid_size(self.received, ticket.expected_bytes)
            service._count_rejection(exc)
            raise exc
        if self._batch:
            await self._hand_off()
        await self._settle(0)
        self._finished = True
        commit = service._run(self._stage.commit, ticket.expected_bytes)
        cancelled = False
        while True:
            try:
                complete = await asyncio.shield(commit)
                break
            except asyncio.CancelledError:
                cancelled = True  # the commit is quick: wait for it, then re-raise
            except Rejected as exc:
                service._count_rejection(exc)
                raise
        service._accepted(ticket)
        if complete:
            await service._close_round()
        if cancelled:
            raise asyncio.CancelledError
        return ticket.round

    def close(self) -> None:
        """Drop the update unless ``finish`` took it (queued on the worker, in order)."""
        if not self._finished:
            for fold in self._pending:  # their outcome no longer matters
                fold.add_done_callback(_consume)
            self._pending.clear()
            self._batch = []
            self._service._run(self._stage.abort)


def _abort_begun(begun: Future[UpdateStage]) -> None:
    """Drop a stage that was begun for a push that is gone (runs on the worker)."""
    if not begun.cancelled() and begun.exception() is None:
        begun.result().abort()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning


def invalid_size(received: int, expected: int) -> Rejected:
    return Rejected(Kind.INVALID, "truncated", f"update carries {received} bytes, its header describes {expected}")
