"""Leader election: several operator replicas, one of them reconciling.

The replicas compete for one coordination.k8s.io/v1 Lease in the operator's namespace,
with the protocol of Kubernetes' own controllers (client-go's leaderelection package
with a Lease lock), over the operator's aiohttp client:

- The Lease's `spec.holderIdentity` names the leader (pod name + random suffix, so a
  restarted container is a new candidate); `renewTime` moves on every renewal.
- A standby reads the Lease every `retry_period`. It takes over only when the Lease is
  free (no holder: released) or when the record has not changed for
  `leaseDurationSeconds` by *its own* monotonic clock since it first saw that record
  (the holder's timestamps are never compared with local time: clocks may be skewed).
- Every write is a create or a PUT carrying the `resourceVersion` last read: of two
  replicas that try at once, the API server accepts one and answers the other 409
  Conflict (optimistic concurrency), which counts as "not acquired, try later".
- The leader renews every `retry_period` (one PUT from its own last write; a 409 makes
  it read the Lease again). If no renewal succeeded for `renew_deadline` seconds, or
  the Lease names another holder, leadership is lost: `hold()` raises
  `LeadershipLost`, and the operator stops writing and exits (handlers.py). The
  deadline counts from when the last successful renewal was *sent*, and a standby's
  clock from when it *saw* a change, so the old leader stops at least
  `lease_duration - renew_deadline` seconds before anyone can take over.
- `release()` (a leader stopping on SIGTERM) writes an empty holder and
  `leaseDurationSeconds: 1`: a standby takes over at its next attempt instead of
  waiting for expiry.

The decisions are pure functions (`observe`, `held_by_other`, `claim`, `released`);
`LeaderElector` does the I/O. handlers.py runs it around kopf; nothing here imports kopf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from flextrain.operator.kube import JSON, Conflict, KubeClient, KubeError

API_VERSION: Final[str] = "coordination.k8s.io/v1"
#: Kubernetes' MicroTime, as client-go writes it.
MICROTIME: Final[str] = "%Y-%m-%dT%H:%M:%S.%fZ"
#: Retry waits are stretched by up to this fraction, so that replicas started together
#: do not keep colliding (client-go jitters likewise).
JITTER: Final[float] = 0.2
log = logging.getLogger("flextrain.operator.leader")


class LeadershipLost(Exception):
    """The Lease could not be renewed in time or was taken: stop writing at once."""


def identity() -> str:
    """This replica's holderIdentity: the pod name (POD_NAME from the downward API, else
    the host name) and a random suffix, so that a restarted container is a new holder and
    two processes on one host never share an identity."""
    pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{pod[:100]}_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that the election reads and writes."""

    holder: str = ""
    duration: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}

        def number(key: str) -> int:
            value = spec.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        holder = spec.get("holderIdentity")
        return cls(
            holder=holder if isinstance(holder, str) else "",
            duration=number("leaseDurationSeconds"),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=number("leaseTransitions"),
        )

    def spec(self) -> JSON:
        out: JSON = {"leaseDurationSeconds": self.duration, "leaseTransitions": self.transitions}
        if self.holder:
            out["holderIdentity"] = self.holder
        if self.acquire_time:
            out["acquireTime"] = self.acquire_time
        if self.renew_time:
            out["renewTime"] = self.renew_time
        return out


@dataclass(frozen=True)
class Observation:
    """A Lease record and when (monotonic seconds) this replica first saw it."""

    record: LeaseRecord
    at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """What is known after reading `record` at `now`: the clock restarts only when the
    record changed (a renewal moves renewTime, so a live leader keeps restarting it)."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def held_by_other(observed: Observation, me: str, now: float) -> bool:
    """Whether another identity holds the Lease and it has not expired by this
    replica's clock: `leaseDurationSeconds` since the record was first seen unchanged.
    An empty holder (released) is free at once."""
    record = observed.record
    return bool(record.holder) and record.holder != me and now < observed.at + record.duration


def claim(current: LeaseRecord | None, me: str, duration: int, wall: datetime) -> LeaseRecord:
    """The record that takes (or, when `me` holds it, renews) the Lease at `wall`."""
    stamp = wall.strftime(MICROTIME)
    if current is not None and current.holder == me:
        return replace(current, duration=duration, renew_time=stamp)
    transitions = 0 if current is None else current.transitions + 1
    return LeaseRecord(me, duration, stamp, stamp, transitions)


def released(current: LeaseRecord, wall: datetime) -> LeaseRecord:
    """The record a leader writes when it stops: no holder, one second, so a standby
    takes over at its next attempt."""
    stamp = wall.strftime(MICROTIME)
    return LeaseRecord("", 1, stamp, stamp, current.transitions)


class LeaderElector:
    """One replica's side of the election on Lease `namespace/name`.

    `client` should be a client of its own (not the handlers'): renewals then never queue
    behind a burst of job creations, and the handlers' request metrics stay theirs.
    `relogin` is awaited after a 401 (a rotated service-account token)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: int = 15,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        relogin: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._relogin = relogin
        self._clock = clock
        self._wall = wall
        #: The Lease as last read or written (its resourceVersion guards the next write).
        self.lease: JSON | None = None
        self.observed: Observation | None = None
        self.leading = False
        #: Monotonic time the last successful acquire or renewal was sent.
        self.renewed_at: float | None = None

    @property
    def holder(self) -> str:
        """The holder last seen ("" when free or not read yet)."""
        return self.observed.record.holder if self.observed else ""

    # -- one attempt -------------------------------------------------------------------

    def _body(self, record: LeaseRecord, lease: Mapping[str, Any] | None) -> JSON:
        meta: JSON = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta = {k: v for k, v in (lease.get("metadata") or {}).items() if k != "managedFields"}
        return {"apiVersion": API_VERSION, "kind": "Lease", "metadata": meta, "spec": record.spec()}

    def _wrote(self, lease: JSON, record: LeaseRecord, sent: float) -> bool:
        self.lease = lease
        self.observed = Observation(record, sent)
        self.renewed_at = sent
        if not self.leading:
            log.info("acquired Lease %s/%s as %s", self.namespace, self.name, self.identity)
        self.leading = True
        return True

    async def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the Lease; True when this replica holds it now.
        A 409 (another replica wrote first) is False; other API errors raise KubeError."""
        now = self._clock()
        if self.leading and self.lease is not None and self.observed is not None:
            record = claim(self.observed.record, self.identity, self.lease_duration, self._wall())
            try:  # the usual renewal: one PUT on top of our own last write
                return self._wrote(await self.client.replace(self._body(record, self.lease)), record, now)
            except Conflict:
                pass  # someone else wrote meanwhile: read it, then decide
        lease = await self.client.get(API_VERSION, "Lease", self.name, self.namespace)
        if lease is None:
            record = claim(None, self.identity, self.lease_duration, self._wall())
            try:
                return self._wrote(await self.client.create(self._body(record, None)), record, now)
            except Conflict:
                return False  # another replica created it first
        current = LeaseRecord.from_lease(lease)
        self.lease = lease
        self.observed = observe(self.observed, current, now)
        if held_by_other(self.observed, self.identity, now):
            return False
        if self.leading and current.holder != self.identity:
            return False  # our Lease was taken (or released by hand): not ours to re-take
        record = claim(current, self.identity, self.lease_duration, self._wall())
        try:
            return self._wrote(await self.client.replace(self._body(record, lease)), record, now)
        except Conflict:
            return False

    # -- loops ---------------------------------------------------------------------------

    async def _attempt(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout)
        except TimeoutError:
            log.warning("Lease %s/%s: no answer within %.1f s", self.namespace, self.name, timeout)
        except KubeError as exc:
            log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
            if exc.status == 401 and self._relogin is not None:
                with contextlib.suppress(Exception):
                    await self._relogin()
        return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Try every `retry_period` until this replica leads (True) or `stop` is set
        (False)."""
        reported = ""
        while not stop.is_set():
            if await self._attempt(self.renew_deadline):
                return True
            if self.holder and self.holder != reported:
                log.info("standing by: Lease %s/%s is held by %s", self.namespace, self.name, self.holder)
                reported = self.holder
            wait = self.retry_period * (1 + JITTER * random.random())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        return False

    async def hold(self) -> None:
        """Renew every `retry_period` while leading; raise LeadershipLost when no renewal
        succeeded for `renew_deadline` seconds or the Lease names another holder."""
        if not self.leading or self.renewed_at is None:
            raise LeadershipLost("not leading")
        while True:
            await asyncio.sleep(self.retry_period)
            sent = self._clock()
            left = self.renewed_at + self.renew_deadline - sent
            if left > 0 and await self._attempt(left):
                continue
            if self.holder and self.holder != self.identity:
                self.leading = False
                raise LeadershipLost(f"Lease {self.namespace}/{self.name} is now held by {self.holder}")
            if self._clock() >= self.renewed_at + self.renew_deadline:
                self.leading = False
                raise LeadershipLost(
                    f"Lease {self.namespace}/{self.name} not renewed for {self.renew_deadline:g} s"
                )

    async def release(self) -> None:
        """Give the Lease up (on a graceful stop) so that a standby takes over at once."""
        if not self.leading or self.lease is None or self.observed is None:
            return
        self.leading = False
        record = released(self.observed.record, self._wall())
        try:
            self.lease = await self.client.replace(self._body(record, self.lease))
            log.info("released Lease %s/%s", self.namespace, self.name)
        except KubeError as exc:  # it expires on its own
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
