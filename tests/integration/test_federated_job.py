"""A real aggregator and real trainers on loopback run a tiered job to the end."""

from __future__ import annotations

from pathlib import Path

import torch

from flextrain.core.export import load_submodel
from flextrain.core.models import ModelSpec
from flextrain.core.partition import prefix_keys
from tests.integration.conftest import Status
from tests.integration.procs import Cluster, make_cluster, tiny_job, wait_for


def _prefix_bytes(depth: int) -> int:
    model = ModelSpec("resnet", 8, 10, 1, 8).build()
    state = model.state_dict()
    return sum(state[k].numel() * state[k].element_size() for k in prefix_keys(list(state), depth))


def test_three_tiers_train_to_completion_and_accuracy_rises(cluster: Cluster) -> None:
    cluster.start_aggregator()
    trainers = cluster.start_all_trainers()
    status = Status(cluster.port)
    try:
        for proc in trainers:
            assert proc.wait(timeout=180) == 0, cluster.logs()
        final = status()
    finally:
        status.close()
    assert final.done and final.round == 3, cluster.logs()
    accuracy = {a.depth: a.accuracy for a in final.accuracy}
    assert set(accuracy) == {1, 2, 3}
    assert all(a > 0.2 for a in accuracy.values()), accuracy  # chance is 0.1
    history = torch.load(sorted((cluster.root / "checkpoints").glob("round-*.pt"))[-1], weights_only=True)[
        "accuracy_history"
    ]
    first = {h["depth"]: h["accuracy"] for h in history if h["round"] == 1}
    assert sum(accuracy.values()) > sum(first.values()), history
    # The weak tier never receives or sends a deep block: its bytes are exactly its prefix.
    tiers = {t.tier: t for t in final.tiers}
    for name, depth in (("shallow", 1), ("middle", 2), ("deep", 3)):
        assert tiers[name].bytes_sent == 3 * _prefix_bytes(depth), name
        assert tiers[name].bytes_received == 3 * _prefix_bytes(depth), name
        assert tiers[name].last_round_pushed == 3
    assert tiers["shallow"].bytes_received < tiers["deep"].bytes_received
    # Beside the checkpoints, one sub-model per tier at its depth (status.model.exports in a cluster).
    for name, depth in (("shallow", 1), ("middle", 2), ("deep", 3)):
        _model, meta = load_submodel(cluster.root / "checkpoints" / "models" / f"{name}.safetensors")
        assert meta["depth"] == depth and meta["round"] == 3 and meta["accuracy"] == accuracy[depth], meta


def test_trainer_exits_with_a_reason_on_a_wrong_token(cluster: Cluster) -> None:
    cluster.start_aggregator(checkpoints=False)
    proc = cluster.start_trainer("shallow", 0, FLEXTRAIN_TIER_KEY="wrong")
    assert proc.wait(timeout=60) == 2
    assert "UNAUTHENTICATED" in proc.output()


def test_trainer_refuses_an_incomplete_environment(cluster: Cluster) -> None:
    cluster.start_aggregator(checkpoints=False)
    proc = cluster.start_trainer("shallow", 0, FLEXTRAIN_DEPTH="zero")
    assert proc.wait(timeout=60) == 2
    assert "FLEXTRAIN_DEPTH='zero' is not an integer" in proc.output()


def test_trainer_waits_for_an_aggregator_that_starts_late(cluster: Cluster) -> None:
    import socket

    with socket.socket() as s:  # reserve a free port, then release it for the aggregator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster.port = port
    trainers = cluster.start_all_trainers()
    wait_for(lambda: "retrying" in trainers[0].output(), 60, "the trainer to retry")
    cluster.start_aggregator(port=port)
    for proc in trainers:
        assert proc.wait(timeout=180) == 0, cluster.logs()


def test_the_anchor_option_reaches_every_deeper_trainer(tmp_path: Path) -> None:
    """spec.training.distillation.anchor travels from the manifest through the
    aggregator's Join answer to the trainers' loss: each deeper trainer names the
    shallower tiers it also trains, the weakest names none, and the job completes."""
    job = tiny_job("anchored", training={"rounds": 2, "distillation": {"anchor": {"loss": "ce", "tiers": "all"}}})
    made = make_cluster(tmp_path / "cluster", job)
    try:
        made.start_aggregator(checkpoints=False)
        trainers = {name: made.start_trainer(name, 0) for name in ("shallow", "middle", "deep")}
        for proc in trainers.values():
            assert proc.wait(timeout=180) == 0, made.logs()
        assert "anchor option" not in trainers["shallow"].output()
        assert "also training the prefixes of depth [1] (ce)" in trainers["middle"].output()
        assert "also training the prefixes of depth [1, 2] (ce)" in trainers["deep"].output()
    finally:
        made.close()
