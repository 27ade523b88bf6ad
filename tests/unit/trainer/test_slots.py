"""Training slots bound how many trainers of a machine train at once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from flextrain.trainer.slots import TrainingSlots


def _hold(directory: str, count: int, seconds: float, log: str) -> None:
    with TrainingSlots(Path(directory), count):
        with open(log, "a") as handle:
            handle.write(f"start {time.monotonic()}\n")
        time.sleep(seconds)
        with open(log, "a") as handle:
            handle.write(f"end {time.monotonic()}\n")


def test_at_most_n_hold_a_slot_at_once(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hold, args=(str(tmp_path / "slots"), 2, 0.4, str(log))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    events = sorted((float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines()))
    holding = peak = 0
    for _, kind in events:
        holding += 1 if kind == "start" else -1
        peak = max(peak, holding)
    assert peak == 2


def test_a_dead_holder_frees_its_slot(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    holder = ctx.Process(target=_hold, args=(str(tmp_path / "slots"), 1, 60, str(tmp_path / "log")))
    holder.start()
    time.sleep(0.5)
    holder.kill()
    holder.join(timeout=10)
    slots = TrainingSlots(tmp_path / "slots", 1)
    assert slots.acquire() == 0
    slots.release()


def test_slot_count_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TrainingSlots(tmp_path, 0)
