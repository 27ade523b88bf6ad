"""Checkpoints of the aggregator: written atomically after completed rounds, read back
on start.

A checkpoint is one torch file `round-NNNNNN.pt` holding the global model, the number
of completed rounds, the strategy name, per-tier counters and the accuracy history.
It is written to a temporary file in the same directory, fsynced, renamed over its
final name and the directory fsynced: a crash at any moment leaves either the old or
the new file complete, never a torn one. On start the newest file that loads is used
(a corrupt newest file falls back to the previous one). The newest `keep` files are
kept.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from torch import Tensor

log = logging.getLogger(__name__)

FORMAT_VERSION: Final[int] = 1
_NAME = re.compile(r"^round-(\d{6,})\.pt$")


@dataclass
class Checkpoint:
    """Everything needed to resume after the round `completed_rounds`."""

    job: str
    completed_rounds: int
    strategy: str
    global_state: dict[str, Tensor]
    depths: dict[str, int]
    tier_counters: dict[str, dict[str, int]] = field(default_factory=dict)
    #: [{round, depth, accuracy}], oldest first.
    accuracy_history: list[dict[str, Any]] = field(default_factory=list)
    #: Free-form counters (bytes, rejections) for reports.
    counters: dict[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """A directory of round checkpoints."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, completed_rounds: int) -> Path:
        return self.directory / f"round-{completed_rounds:06d}.pt"

    def save(self, checkpoint: Checkpoint) -> Path:
        final = self.path_for(checkpoint.completed_rounds)
        payload = {"format_version": FORMAT_VERSION, **vars(checkpoint)}
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        self._prune()
        return final

    def rounds(self) -> list[int]:
        """Completed-round numbers of the checkpoints present, newest first."""
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found, reverse=True)

    def load_latest(self, job: str) -> Checkpoint | None:
        """The newest checkpoint of `job` that loads; None when there is none."""
        for completed in self.rounds():
            path = self.path_for(completed)
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
                if data.pop("format_version", None) != FORMAT_VERSION:
                    raise ValueError("unknown checkpoint format")
                checkpoint = Checkpoint(**data)
            except Exception as exc:  # a torn or foreign file: try the previous one
                log.warning("skipping unreadable checkpoint %s: %s", path, exc)
                continue
            if checkpoint.job != job:
                raise ValueError(f"{path} belongs to job {checkpoint.job!r}, not {job!r}")
            return checkpoint
        return None

    def _prune(self) -> None:
        for completed in self.rounds()[self.keep :]:
            self.path_for(completed).unlink(missing_ok=True)
        for stale in self.directory.glob(".tmp-*.pt"):
            stale.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
