"""Flow control of the aggregator: what keeps its memory independent of the number of
clients.

Pushes are received one at a time (`PushLine`), the others wait before sending their
data: each chunk of the one being received goes to the worker as it arrives and is
folded into the round's staging sums there while the next chunk is on its way
(`PushStream`), and the update counts when its last chunk is in
(``flextrain.aggregator.state.UpdateStage``). No payload is ever assembled. Pulls
take turns sending their chunks (`SendSlots`), so that gRPC's copies of them do not
grow with the number of clients either.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from flextrain.aggregator.errors import Rejected
from flextrain.aggregator.state import ClientInfo, UpdateStage
from flextrain.aggregator.worker import Worker
from flextrain.contract.refusals import Reason
from flextrain.wire.tensors import Spec

T = TypeVar("T")

#: Updates up to this size are told to send as soon as they are next in line (see
#: ``PushLine.receive``); larger ones when their turn comes, so that a waiting push
#: never holds more than a small update's worth of data here.
EARLY_SEND_BYTES = 8 * 1024 * 1024

#: The defaults of `PushTimeouts` (docs/aggregator.md, "Slow and stalled clients").
PUSH_IDLE_SECONDS = 10.0
PUSH_GRACE_SECONDS = 10.0
PUSH_MIN_BYTES_PER_SECOND = 256 * 1024

#: Model chunks being sent at once, over all pulls (see ``SendSlots``).
PULL_CHUNKS_IN_FLIGHT = 8
#: How long a chunk may hold its slot before the slot goes to the next one.
PULL_SLOT_LEASE_SECONDS = 2.0


@dataclass(frozen=True)
class PushTimeouts:
    """How long a push may wait for its client's bytes while it holds the receive slot
    (pushes are received one at a time, so every push in line waits with it).

    A push is refused (``push_timeout``; the trainer retries it) when its client sends
    nothing for `idle_seconds`, or when it falls behind `min_bytes_per_second`: after
    waiting `grace_seconds` plus the time its received bytes take at that rate, it must
    have sent more. Only time spent waiting for the client counts, not time its chunks
    wait for the aggregator's worker. So a client that stalls delays the pushes behind
    it by at most `idle_seconds`, and one that trickles by at most `grace_seconds` plus
    its update's size at the minimum rate.
    """

    #: Longest wait for a push's header, and for each of its chunks, in seconds.
    idle_seconds: float = PUSH_IDLE_SECONDS
    #: Waiting time a push may spend beyond what its bytes take at the minimum rate.
    grace_seconds: float = PUSH_GRACE_SECONDS
    #: The slowest upload taken, in bytes per second of waiting for the client.
    min_bytes_per_second: float = PUSH_MIN_BYTES_PER_SECOND

    def __post_init__(self) -> None:
        for name in ("idle_seconds", "grace_seconds", "min_bytes_per_second"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PushTimeouts.{name} must be positive, got {getattr(self, name)}")

    def next_wait(self, waited: float, received: int) -> float:
        """How long the next read may wait, after `waited` seconds spent waiting and
        `received` bytes received; at most 0 when the push has fallen behind."""
        return min(self.idle_seconds, self.grace_seconds + received / self.min_bytes_per_second - waited)

    def longest_seconds(self, nbytes: int) -> float:
        """The most waiting an update of `nbytes` may cost the pushes behind it."""
        return self.grace_seconds + nbytes / self.min_bytes_per_second


@dataclass
class PushTicket:
    """A push whose header passed its checks, before any of its data was read."""

    client: ClientInfo
    round: int
    num_examples: int
    specs: list[Spec]
    expected_bytes: int
    started: float = field(default_factory=time.monotonic)


class PushOutcomes(Protocol):
    """Where the pushes' outcomes go (the rounds: counters, metrics, closing)."""

    def rejected(self, exc: Rejected) -> None:
        """Count a refused push (its update changed nothing)."""

    async def counted(self, ticket: PushTicket, round_complete: bool) -> None:
        """An update counted in its round; `round_complete`: every expected client pushed."""


class PushLine:
    """Receives one push at a time, in the order they arrive."""

    def __init__(self, worker: Worker, outcomes: PushOutcomes, timeouts: PushTimeouts | None = None) -> None:
        self._worker = worker
        self._outcomes = outcomes
        self.timeouts = timeouts or PushTimeouts()
        self._receiving = asyncio.Lock()
        self._next_in_line = asyncio.Semaphore(2)  # the push being received, and the next

    @contextlib.asynccontextmanager
    async def receive(
        self,
        ticket: PushTicket,
        begin: Callable[[], UpdateStage],
        send: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[PushStream]:
        """Receive one update: waits its turn (one push is received at a time), then
        yields the stream to ``feed`` its chunks to and ``finish``. Leaving without
        finishing (a rejection, a client that went away) drops the update. `begin`
        stages the update, on the worker, once its turn has come.

        `send` tells the push's client to send its data (the servicer's initial
        metadata). It is awaited when the push's turn comes or, for an update of at most
        ``EARLY_SEND_BYTES``, as soon as it is next in line: a small update is then on
        its way while the one before it finishes, instead of costing a round trip of
        its own (while it waits, flow control holds back at most one stream's window).
        """
        early = ticket.expected_bytes <= EARLY_SEND_BYTES
        async with self._next_in_line:
            if send is not None and early:
                await send()
            async with self._receiving:
                if send is not None and not early:
                    await send()
                begun = self._worker.submit(begin)
                try:
                    stage = await asyncio.wrap_future(begun)
                except Rejected as exc:  # the round closed while the push waited its turn
                    self._outcomes.rejected(exc)
                    raise
                except asyncio.CancelledError:
                    # The client went away while its stage was being begun: the worker
                    # may still begin it, so drop it there, right behind (before the
                    # next push's stage).
                    self._worker.submit(_abort_begun, begun)
                    raise
                push = PushStream(self._worker, self._outcomes, ticket, stage, self.timeouts)
                try:
                    yield push
                finally:
                    # Queued behind the chunks still being folded (one worker, in
                    # order): the next push's stage can only begin after it.
                    push.close()


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


class PushStream:
    """The update of one push, folded on the worker as its chunks arrive (see
    ``PushLine.receive``)."""

    #: Chunks handed to the worker at once. Each hand-off costs about 0.1 ms of CPU
    #: (two thread wake-ups), as much as folding a quarter of a chunk.
    BATCH = 4
    #: Batches handed to the worker and not yet folded before ``feed`` waits for it.
    #: Received bytes held: at most (MAX_PENDING + 1) x BATCH chunks (16 MiB).
    MAX_PENDING = 1

    def __init__(
        self,
        worker: Worker,
        outcomes: PushOutcomes,
        ticket: PushTicket,
        stage: UpdateStage,
        timeouts: PushTimeouts | None = None,
    ) -> None:
        self._worker = worker
        self.timeouts = timeouts or PushTimeouts()
        self._outcomes = outcomes
        self.ticket = ticket
        self._stage = stage
        self._pending: deque[asyncio.Future[None]] = deque()
        self._batch: list[bytes | memoryview] = []
        #: Payload bytes received so far.
        self.received = 0
        self._finished = False

    async def paced(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """The client's chunks from `source`, each waited for as long as ``PushTimeouts``
        allows; raises a counted Rejected (``push_timeout``) when the client is too slow.
        Chunks are to be ``feed``-ed as they come (the pace is judged on ``received``)."""
        timeouts, waited = self.timeouts, 0.0
        while True:
            wait = timeouts.next_wait(waited, self.received)
            if wait <= 0:
                raise self._timed_out(waited, idle=False)
            started = time.monotonic()
            try:
                item = await asyncio.wait_for(anext(source), wait)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise self._timed_out(waited + wait, idle=wait >= timeouts.idle_seconds) from None
            waited += time.monotonic() - started
            yield item

    def _timed_out(self, waited: float, *, idle: bool) -> Rejected:
        t, expected = self.timeouts, self.ticket.expected_bytes
        if not idle:
            why = (
                f"sent {self.received} of {expected} bytes in {waited:.1f} s of waiting: slower than the "
                f"minimum {t.min_bytes_per_second / 1024:.0f} KiB/s after a grace of {t.grace_seconds:g} s"
            )
        else:
            why = f"sent nothing for {t.idle_seconds:g} s (idle timeout) after {self.received} of {expected} bytes"
        exc = Rejected(Reason.PUSH_TIMEOUT, f"the push {why}; its update is dropped, push it again")
        self._outcomes.rejected(exc)
        return exc

    async def _settle(self, limit: int) -> None:
        """Wait for folds until at most `limit` are pending (and collect the finished
        ones); a rejection of any of them is raised here, counted."""
        pending = self._pending
        while pending and (len(pending) > limit or pending[0].done()):
            try:
                await pending.popleft()
            except Rejected as exc:
                self._outcomes.rejected(exc)
                raise

    async def feed(self, data: bytes | memoryview) -> None:
        """The payload's next bytes: checked for size here, folded on the worker."""
        expected = self.ticket.expected_bytes
        if self.received + len(data) > expected:
            exc = Rejected(Reason.TOO_LARGE, f"update carries more than the {expected} bytes its header describes")
            self._outcomes.rejected(exc)
            raise exc
        self.received += len(data)
        self._batch.append(data)
        if len(self._batch) >= self.BATCH:
            await self._hand_off()

    async def _hand_off(self) -> None:
        batch, self._batch = self._batch, []
        self._pending.append(self._worker.run(self._stage.feed_all, batch))
        await self._settle(self.MAX_PENDING)

    async def finish(self) -> int:
        """Count the complete update; returns the round it was counted in.

        The commit runs on in the worker if the client goes away meanwhile; an update it
        counted is then fully accounted (and closes its round) before the cancellation
        goes through.
        """
        ticket = self.ticket
        if self.received != ticket.expected_bytes:
            exc = _invalid_size(self.received, ticket.expected_bytes)
            self._outcomes.rejected(exc)
            raise exc
        if self._batch:
            await self._hand_off()
        await self._settle(0)
        self._finished = True
        commit = self._worker.run(self._stage.commit, ticket.expected_bytes)
        cancelled = False
        while True:
            try:
                complete = await asyncio.shield(commit)
                break
            except asyncio.CancelledError:
                cancelled = True  # the commit is quick: wait for it, then re-raise
            except Rejected as exc:
                self._outcomes.rejected(exc)
                raise
        await self._outcomes.counted(ticket, complete)
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
            self._worker.run(self._stage.abort)


def _abort_begun(begun: Future[UpdateStage]) -> None:
    """Drop a stage that was begun for a push that is gone (runs on the worker)."""
    if not begun.cancelled() and begun.exception() is None:
        begun.result().abort()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning


def _invalid_size(received: int, expected: int) -> Rejected:
    return Rejected(Reason.TRUNCATED, f"update carries {received} bytes, its header describes {expected}")


async def send_in_turn(slots: SendSlots, frames: tuple[bytes, ...]) -> AsyncIterator[bytes]:
    """The `frames` of one pull, each yielded while it holds a send slot: the caller
    sends it before asking for the next. The pull's place is taken at its first frame
    (pulls are served in the order their data begins)."""
    order = slots.next_order()
    for frame in frames:
        async with slots.slot(order):  # held until gRPC has sent it (it asks for the next then)
            yield frame  # a serialized data chunk (see flextrain.wire.frames)
