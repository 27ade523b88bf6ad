"""Every protocol message survives a trip through protobuf's bytes unchanged, and the
one dtype table answers both directions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import pytest
import torch

from flextrain.api.flextrainjob import AggregationSpec
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.wire import serde
from flextrain.wire.messages import (
    DataAssignment,
    Joined,
    JoinRequest,
    ModelDescription,
    ModelHeader,
    PullRequest,
    PushResult,
    TrainingConfig,
    UpdateHeader,
)
from flextrain.wire.status import AggregatorStatus, TierStatus, status_from_proto, status_to_proto
from flextrain.wire.tensors import BY_DTYPE, WIRE_DTYPES, Spec, WireFormatError, compression_dtype

SPECS = [
    Spec("stem.conv.weight", (16, 3, 3, 3), torch.float16),
    Spec("stem.bn.num_batches_tracked", (), torch.int64),
    Spec("head.fc.bias", (10,), torch.float16),
]


def make_joined(
    wire_dtype: torch.dtype = torch.bfloat16, anchors: tuple[int, ...] = (), anchor_loss: str = "none"
) -> Joined:
    return Joined(
        client_id="deep-1",
        round=3,
        total_rounds=8,
        done=False,
        model=ModelDescription("resnet", 20, 10, 1, 8, 9, num_parameters=270_000, prefix_parameters=80_000),
        data=DataAssignment("digits", "dirichlet", 0.5, 7, 2, 5, 1000),
        training=TrainingConfig(2, 32, "sgd", 0.05, 0.9, 5e-4, 0.5, "logits", True, wire_dtype, anchors, anchor_loss),
    )


def _through_bytes(message: Any) -> Any:
    return type(message).FromString(message.SerializeToString())


CASES: list[tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]] = [
    (JoinRequest("job", "deep", 1, 3), serde.join_request_to_proto, serde.join_request_from_proto),
    (make_joined(), serde.joined_to_proto, serde.joined_from_proto),
    (make_joined(torch.float32), serde.joined_to_proto, serde.joined_from_proto),
    (make_joined(anchors=(3, 5), anchor_loss="ce"), serde.joined_to_proto, serde.joined_from_proto),
    (PullRequest("deep-1", 4, 12.5), serde.pull_request_to_proto, serde.pull_request_from_proto),
    (ModelHeader(True, False, 4, SPECS, 1234), serde.model_header_to_proto, lambda m: serde.model_header_from_proto(m.header)),
    (ModelHeader(False, True, 9, [], 0), serde.model_header_to_proto, lambda m: serde.model_header_from_proto(m.header)),
    (UpdateHeader("deep-1", 4, 100, SPECS, 0.25, 1.5), serde.update_header_to_proto, lambda m: serde.update_header_from_proto(m.header)),
    (PushResult(True, 4, 1234), serde.push_result_to_proto, serde.push_result_from_proto),
    (
        AggregatorStatus(
            job="j", round=2, total_rounds=5, done=False,
            tiers=[TierStatus("deep", 3, 2, 2, 1, 2, 100, 200)],
            accuracy={1: (0.5, 2), 3: (0.75, 2)},
            rejected={"stale_round": 2}, accepted=7, clients_connected=2,
            round_deadline_unix=1e9 + 60, round_started_unix=1e9,
        ),
        status_to_proto,
        status_from_proto,
    ),
]


@pytest.mark.parametrize(("value", "to_proto", "from_proto"), CASES, ids=lambda c: type(c).__name__)
def test_every_message_round_trips_through_protobuf(value: Any, to_proto: Any, from_proto: Any) -> None:
    assert from_proto(_through_bytes(to_proto(value))) == value


def test_one_table_serves_both_directions_and_the_compression_setting() -> None:
    assert {w.name for w in WIRE_DTYPES} == {"float32", "float16", "bfloat16", "int64"}
    assert {w.proto for w in WIRE_DTYPES} == set(pb.DType.values()) - {pb.DTYPE_UNSPECIFIED}
    for wire in WIRE_DTYPES:
        assert serde.dtype_from_proto(serde.dtype_to_proto(wire.dtype)) == wire.dtype
        assert pb.DType.Name(wire.proto) == f"DTYPE_{wire.name.upper()}"
    assert compression_dtype("none") == torch.float32 == BY_DTYPE[torch.float32].dtype
    assert compression_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(WireFormatError, match="int64"):
        compression_dtype("int64")
    with pytest.raises(WireFormatError, match="cannot travel"):
        serde.dtype_to_proto(torch.float64)


def test_every_compression_a_job_may_ask_for_is_in_the_table() -> None:
    allowed = get_args(AggregationSpec.model_fields["compression"].annotation)
    assert allowed and all(compression_dtype(c).is_floating_point for c in allowed)


def test_a_known_spec_list_is_answered_with_the_same_object() -> None:
    decoder = serde.SpecDecoder()
    decoder.know(3, SPECS)
    message = serde.update_header_to_proto(UpdateHeader("deep-1", 1, 5, list(SPECS))).header
    assert serde.update_header_from_proto(message, decoder, 3).specs is SPECS
    other = serde.update_header_to_proto(UpdateHeader("deep-1", 1, 5, SPECS[:2])).header
    assert serde.update_header_from_proto(other, decoder, 3).specs == SPECS[:2]
    pulled = serde.model_header_to_proto(ModelHeader(True, False, 1, SPECS, 1)).header
    first = serde.model_header_from_proto(pulled, decoder).specs
    again = serde.model_header_from_proto(_through_bytes(pulled), decoder).specs
    assert first == SPECS and again is first, "a pull's list is remembered for the next pull"
    with pytest.raises(WireFormatError, match="unknown wire dtype"):
        serde.update_header_from_proto(pb.UpdateHeader(tensors=[pb.TensorSpec(name="x", shape=[1])]), decoder)


def test_a_join_answer_without_the_anchor_fields_means_the_papers_loss() -> None:
    """An aggregator that predates the anchor option sends neither field."""
    message = serde.joined_to_proto(make_joined())
    message.training.ClearField("anchor_loss")
    joined = serde.joined_from_proto(_through_bytes(message))
    assert joined.training.anchor_depths == ()
    assert joined.training.anchor_loss == "none"
