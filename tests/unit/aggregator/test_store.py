"""Checkpoints are atomic, pruned, and a torn newest file falls back to the previous."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flextrain.aggregator.store import Checkpoint, CheckpointStore


def checkpoint(rounds: int, job: str = "j") -> Checkpoint:
    return Checkpoint(job, rounds, "pad", {"w": torch.full((3,), float(rounds))}, {"t": 2})


def test_save_and_load_latest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for r in (1, 2, 3):
        store.save(checkpoint(r))
    assert store.rounds() == [3, 2], "only the newest two are kept"
    loaded = store.load_latest("j")
    assert loaded is not None and loaded.completed_rounds == 3
    assert torch.equal(loaded.global_state["w"], torch.full((3,), 3.0))
    assert not list(tmp_path.glob(".tmp-*")), "no temporary files left behind"


def test_torn_newest_checkpoint_falls_back(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1))
    store.path_for(2).write_bytes(b"half a file")
    loaded = store.load_latest("j")
    assert loaded is not None and loaded.completed_rounds == 1


def test_empty_directory_means_fresh_start(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "new").load_latest("j") is None


def test_checkpoint_of_another_job_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1, job="other"))
    with pytest.raises(ValueError, match="belongs to job 'other'"):
        store.load_latest("j")
