from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.wire.auth import metadata
from tests.integration.procs import TOKEN, Cluster, make_cluster, tiny_job


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = make_cluster(tmp_path / "cluster", tiny_job())
    try:
        yield made
    finally:
        made.close()


class Status:
    """GetStatus over a real channel."""

    def __init__(self, port: int, token: str = TOKEN) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.AggregatorStub(self.channel)
        self.token = token

    def __call__(self) -> pb.GetStatusResponse:
        return self.stub.GetStatus(pb.GetStatusRequest(), metadata=metadata(self.token), timeout=10)

    def close(self) -> None:
        self.channel.close()
