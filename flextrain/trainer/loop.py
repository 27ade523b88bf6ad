"""The trainer's loop: join, then pull -> local training (core client step) -> push,
until the aggregator says done. Survives an aggregator restart (retry with backoff,
re-join) and stale rounds (skip to the next); gives up only on permanent errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from flextrain.core.federated import client_update
from flextrain.core.losses import ANCHOR_LOSSES, TrainingDiverged
from flextrain.core.models import ModelSpec
from flextrain.core.optim import OptimizerConfig
from flextrain.trainer.client import (
    AggregatorClient,
    Fatal,
    Rejoin,
    Retry,
    Stale,
    backoff_delays,
)
from flextrain.trainer.config import ConfigError, TrainerConfig, partition_label
from flextrain.trainer.slots import TrainingSlots
from flextrain.wire.messages import Joined

log = logging.getLogger("flextrain.trainer")


@dataclass
class TrainerStats:
    rounds_trained: int = 0
    rounds_stale: int = 0
    rounds_diverged: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    reconnects: int = 0


def pick_device(wanted: str) -> torch.device:
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"FLEXTRAIN_DEVICE={wanted} but no CUDA device is available")
    return torch.device(wanted)


class Trainer:
    def __init__(
        self,
        config: TrainerConfig,
        client: AggregatorClient | None = None,
        *,
        max_steps_per_epoch: int | None = None,
        retry_for_seconds: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.client = client or AggregatorClient(config)
        self.max_steps = max_steps_per_epoch
        self.retry_for = retry_for_seconds
        self.sleep = sleep
        self.stats = TrainerStats()
        self.device = pick_device(config.device)
        self._loader: Any = None
        self._joined: Joined | None = None

    def _with_retry(self, what: str, call: Callable[[], Any]) -> Any:
        """Run `call`, retrying transient failures with backoff for up to retry_for seconds."""
        give_up = time.monotonic() + self.retry_for
        delays: Iterator[float] = backoff_delays()
        while True:
            try:
                return call()
            except Retry as exc:
                if time.monotonic() > give_up:
                    raise Fatal(f"{what}: aggregator unavailable for {self.retry_for:.0f}s ({exc})") from exc
                delay = next(delays)
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay, extra={"tier": self.config.tier})
                self.stats.reconnects += 1
                self.sleep(delay)

    def join(self) -> Joined:
        joined: Joined = self._with_retry("join", self.client.join)
        self._check_partition(joined)
        self._check_anchors(joined)
        self._joined = joined
        log.info(
            "joined as %s: round %d of %d, depth %d, shard %d of %d",
            joined.client_id, joined.round, joined.total_rounds, self.config.depth, joined.data.shard_index, joined.data.num_shards,
            extra={"client": joined.client_id},
        )
        t = joined.training
        if t.anchor_loss != "none" and t.anchor_depths:
            log.info("anchor option: also training the prefixes of depth %s (%s)", list(t.anchor_depths), t.anchor_loss, extra={"client": joined.client_id})
        return joined

    def _check_partition(self, joined: Joined) -> None:
        want = self.config.partition
        have = partition_label(joined.data.scheme, joined.data.alpha)
        if want and want != have:
            raise ConfigError(f"FLEXTRAIN_PARTITION={want} but the job partitions the data as {have}")

    def _check_anchors(self, joined: Joined) -> None:
        """The aggregator's anchor option must name a known loss and shallower depths."""
        t = joined.training
        if t.anchor_loss not in ANCHOR_LOSSES:
            raise ConfigError(f"the aggregator asks for anchor loss {t.anchor_loss!r}; this trainer knows {list(ANCHOR_LOSSES)}")
        bad = [a for a in t.anchor_depths if not 1 <= a < self.config.depth]
        if bad:
            raise ConfigError(f"the aggregator's anchor depths {bad} are not in [1, {self.config.depth - 1}] (this trainer's depth is {self.config.depth})")

    def _data(self, joined: Joined) -> Any:
        if self._loader is None:
            from flextrain.data import load_dataset, make_loader, shard_for

            d = joined.data
            splits = load_dataset(d.dataset, self.config.data_dir, seed=d.seed, limit=d.limit or None)
            shard = shard_for(splits.train_labels, d.scheme, d.alpha or None, d.seed, d.num_shards, d.shard_index)
            self._loader = make_loader(
                splits.train, shard, batch_size=joined.training.batch_size, shuffle=True, seed=d.seed + d.shard_index,
                pin_memory=self.device.type == "cuda",
            )
            log.info("data: %s shard %d holds %d examples", d.dataset, d.shard_index, len(shard), extra={"client": joined.client_id})
        return self._loader

    def run(self) -> TrainerStats:
        """Train until the aggregator reports done; raises Fatal/ConfigError on permanent errors."""
        joined = self.join()
        min_round = joined.round
        m = joined.model
        spec = ModelSpec(m.family, m.layers, m.num_classes, m.in_channels, m.image_size, tuple(sorted(m.options.items())))
        t = joined.training
        optimizer = OptimizerConfig(name=t.optimizer, lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay)
        loader = self._data(joined)
        while True:
            try:
                # The pulled tensors are loaded into the model before the next pull.
                pulled = self._with_retry("pull", partial(self.client.pull, joined.client_id, min_round, reuse_buffer=True))
            except Rejoin:
                # The aggregator restarted from its last checkpoint: the round this
                # trainer may already have pushed was lost with it, so train whatever
                # round it is in now (waiting for a later one would stall that round).
                joined = self.join()
                min_round = joined.round
                continue
            if pulled.done:
                log.info("training complete: %d rounds trained here", self.stats.rounds_trained, extra={"client": joined.client_id})
                return self.stats
            if not pulled.ready:
                continue
            self.stats.bytes_received += pulled.nbytes
            slot: AbstractContextManager[object] = (
                TrainingSlots(self.config.slots_dir, self.config.slots) if self.config.slots_dir else nullcontext()
            )
            try:
                with slot:
                    started = time.monotonic()
                    result = client_update(
                        pulled.tensors, spec, self.config.depth, loader, t.local_epochs, optimizer,
                        beta=t.distillation_beta, distill=t.distill, device=self.device,
                        distill_target=t.distillation_target or "probs", max_steps_per_epoch=self.max_steps,
                        anchor_depths=t.anchor_depths, anchor_loss=t.anchor_loss,
                    )
            except TrainingDiverged as exc:
                # Nothing sensible to send: skip this round (it closes by quorum) and retry
                # from the next global model.
                log.error("round %d: local training diverged (%s); skipping the round", pulled.round, exc, extra={"client": joined.client_id})
                self.stats.rounds_diverged += 1
                min_round = pulled.round + 1
                continue
            seconds = time.monotonic() - started
            try:
                push = partial(
                    self.client.push, joined.client_id, pulled.round, result.tensors,
                    result.num_examples, t.wire_dtype, result.train_loss, seconds,
                )
                sent = self._with_retry("push", push)
            except Stale as exc:
                log.warning("round %d closed before this update arrived (%s); joining the next round", pulled.round, exc, extra={"client": joined.client_id})
                self.stats.rounds_stale += 1
            except Rejoin:
                joined = self.join()
                min_round = joined.round  # the restarted aggregator's round: pull it again
                continue
            else:
                self.stats.bytes_sent += sent
                self.stats.rounds_trained += 1
                log.info(
                    "round %d pushed: loss %.4f, %d examples, %.1fs training, %d bytes",
                    pulled.round, result.train_loss, result.num_examples, seconds, sent,
                    extra={"client": joined.client_id, "round": pulled.round},
                )
            min_round = pulled.round + 1
