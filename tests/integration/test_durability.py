"""Crashes: a SIGKILLed aggregator resumes from its last checkpoint; a dead trainer
does not stop the job (its round closes at the deadline by quorum); a model over
100 MB moves through PullModel/PushUpdate intact."""

from __future__ import annotations

import hashlib
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from flextrain.contract.credentials import tier_key
from flextrain.trainer.client import AggregatorClient
from flextrain.trainer.config import TrainerConfig
from flextrain.wire.tensors import encode
from tests.integration.conftest import Status
from tests.integration.procs import TOKEN, make_cluster, tiny_job, wait_for


@pytest.mark.timeout(300)
def test_sigkilled_aggregator_resumes_and_the_job_finishes(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, tiny_job("durable", training={"rounds": 5}))
    try:
        first = cluster.start_aggregator()
        port = cluster.port
        trainers = cluster.start_all_trainers()
        checkpoints = tmp_path / "checkpoints"
        wait_for(lambda: (checkpoints / "round-000002.pt").exists(), 120, "two completed rounds")
        first.kill(signal.SIGKILL)
        first.wait(timeout=10)
        second = cluster.start_aggregator(port=port)
        for proc in trainers:
            assert proc.wait(timeout=180) == 0, cluster.logs()
        resumed = re.search(r"resumed job durable after round (\d+)", second.output())
        assert resumed and int(resumed.group(1)) >= 2, second.output()
        status = Status(port)
        try:
            final = status()
        finally:
            status.close()
        assert final.done and final.round == 5
        history = torch.load(checkpoints / "round-000005.pt", weights_only=True)["accuracy_history"]
        assert sorted({h["round"] for h in history}) == [1, 2, 3, 4, 5], "a completed round was lost"
        assert any("retrying" in t.output() for t in trainers), "trainers never saw the outage"
    finally:
        cluster.close()


@pytest.mark.timeout(300)
def test_dead_trainer_round_closes_by_quorum_and_training_continues(tmp_path: Path) -> None:
    job = tiny_job(
        "quorum",
        training={"rounds": 3},
        aggregation={"quorum": 0.6, "roundTimeoutSeconds": 4},
    )
    cluster = make_cluster(tmp_path, job)
    try:
        cluster.start_aggregator(checkpoints=False)
        shallow, middle, deep = cluster.start_all_trainers()
        status = Status(cluster.port)
        wait_for(lambda: status().round >= 1, 120, "the first round to close")
        deep.kill(signal.SIGKILL)  # in the middle of round 2
        assert shallow.wait(timeout=180) == 0, cluster.logs()
        assert middle.wait(timeout=180) == 0, cluster.logs()
        try:
            final = status()
        finally:
            status.close()
        assert final.done and final.round == 3
        tiers = {t.tier: t for t in final.tiers}
        assert tiers["deep"].last_round_pushed < 3 <= tiers["shallow"].last_round_pushed
        assert "round deadline passed" in cluster.aggregator.output() if cluster.aggregator else False
    finally:
        cluster.close()


def test_model_over_100_mb_moves_intact(tmp_path: Path) -> None:
    # ResNet-20 with a 410,000-class head: 64 x 410,000 float32 = 105 MB in the head alone.
    job = tiny_job(
        "large",
        tiers=[("full", 9, 1)],
        model={"family": "resnet", "layers": 20, "numClasses": 410_000},
        training={"rounds": 2},
    )
    cluster = make_cluster(tmp_path, job)
    try:
        cluster.start_aggregator(checkpoints=False)
        config = TrainerConfig(f"127.0.0.1:{cluster.port}", tier_key(TOKEN, "large", "full"), "large", "full", 9, 0)
        client = AggregatorClient(config)
        try:
            joined = client.join()
            pulled = client.pull(joined.client_id, 1)
            assert pulled.nbytes > 100 * 2**20
            assert pulled.tensors["head.fc.weight"].shape == (410_000, 64)
            update = {k: v + 1 if v.is_floating_point() else v for k, v in pulled.tensors.items()}
            sent = client.push(joined.client_id, 1, update, 10, joined.training.wire_dtype, 0.0, 0.0)
            assert sent == pulled.nbytes
            again = client.pull(joined.client_id, 2, wait_seconds=120)
            assert again.round == 2
            digest = lambda t: hashlib.sha256(encode(t).payload).hexdigest()  # noqa: E731
            assert digest(again.tensors) == digest(update)
        finally:
            client.close()
    finally:
        cluster.close()


@pytest.mark.timeout(240)
def test_pulls_that_stop_reading_do_not_stall_the_others(tmp_path: Path) -> None:
    """More stalled pulls than the aggregator sends chunks at once (SendSlots): each
    holds its turn for one lease at most, so a client that reads gets its model."""
    from flextrain.aggregator.flow import PULL_CHUNKS_IN_FLIGHT
    from flextrain.proto.v1 import aggregator_pb2 as pb

    # ResNet-20 with a 100,000-class head: 26 MB, far more than a stream's window.
    job = tiny_job("stalls", tiers=[("full", 9, 2)], model={"family": "resnet", "layers": 20, "numClasses": 100_000})
    cluster = make_cluster(tmp_path, job)
    stalled_clients: list[AggregatorClient] = []
    pool = ThreadPoolExecutor(1)
    try:
        cluster.start_aggregator(checkpoints=False)
        address = f"127.0.0.1:{cluster.port}"
        staller = AggregatorClient(TrainerConfig(address, tier_key(TOKEN, "stalls", "full"), "stalls", "full", 9, 0))
        stalled_clients.append(staller)
        stalled_id = staller.join().client_id
        streams = []
        for _ in range(PULL_CHUNKS_IN_FLIGHT + 2):
            # A channel each (as separate trainers), reading the header and no more.
            client = AggregatorClient(TrainerConfig(address, tier_key(TOKEN, "stalls", "full"), "stalls", "full", 9, 0))
            stalled_clients.append(client)
            request = pb.PullModelRequest(client_id=stalled_id, min_round=1, wait_seconds=5)
            stream = client._pull_model(request, metadata=client._metadata, timeout=200)
            next(stream)  # the header; the data chunks then fill the stream's window
            streams.append(stream)
        reader = AggregatorClient(TrainerConfig(address, tier_key(TOKEN, "stalls", "full"), "stalls", "full", 9, 1))
        stalled_clients.append(reader)
        reader_id = reader.join().client_id
        pulled = pool.submit(reader.pull, reader_id, 1).result(timeout=60)
        assert pulled.nbytes > 25 * 2**20 and pulled.round == 1
        for stream in streams:
            stream.cancel()
    finally:
        pool.shutdown(wait=False)  # a pull that hung ends when its channel closes
        for client in stalled_clients:
            client.close()
        cluster.close()
