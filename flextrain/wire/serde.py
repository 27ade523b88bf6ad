"""The protocol's messages <-> the generated protobuf classes: symmetric
``*_to_proto`` / ``*_from_proto`` pairs, the only place either side of the wire
builds or reads a message field by field (round-trip tests: tests/unit/wire/test_serde.py).

Data chunks are framed by hand (``flextrain.wire.frames``); GetStatus has its pair in
``flextrain.wire.status``, which the torch-free operator reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from flextrain.proto.v1 import aggregator_pb2 as pb
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
from flextrain.wire.tensors import BY_DTYPE, BY_PROTO, Spec, WireFormatError

# -- tensors -----------------------------------------------------------------------


def dtype_to_proto(dtype: torch.dtype) -> pb.DType:
    try:
        return BY_DTYPE[dtype].proto  # type: ignore[return-value]
    except KeyError:
        raise WireFormatError(f"dtype {dtype} cannot travel on the wire") from None


def dtype_from_proto(value: int) -> torch.dtype:
    try:
        return BY_PROTO[value].dtype
    except KeyError:
        raise WireFormatError(f"unknown wire dtype {value}") from None


def spec_to_proto(spec: Spec) -> pb.TensorSpec:
    return pb.TensorSpec(name=spec.name, shape=list(spec.shape), dtype=dtype_to_proto(spec.dtype))


def spec_from_proto(message: pb.TensorSpec) -> Spec:
    if any(d < 0 for d in message.shape):
        raise WireFormatError(f"tensor {message.name!r} has a negative dimension {list(message.shape)}")
    return Spec(message.name, tuple(int(d) for d in message.shape), dtype_from_proto(message.dtype))


class SpecDecoder:
    """Decodes the tensor specs of headers, each distinct list once.

    A round's headers list the same tensors again and again (every pull of a depth,
    every push of a depth). A list registered under a key (``know``, or ``decode`` with
    ``remember``) is recognised by one comparison of messages and answered with the
    same list of Specs; anything else is converted tensor by tensor.
    """

    def __init__(self) -> None:
        self._known: dict[Hashable, tuple[Any, list[Spec]]] = {}

    def knows(self, key: Hashable) -> bool:
        return key in self._known

    def know(self, key: Hashable, specs: list[Spec]) -> None:
        """Register `specs` under `key`."""
        self._known[key] = (pb.ModelHeader(tensors=[spec_to_proto(s) for s in specs]).tensors, specs)

    def decode(self, tensors: Sequence[pb.TensorSpec], key: Hashable = None, *, remember: bool = False) -> list[Spec]:
        """The specs `tensors` lists (the list registered under `key` when they are the
        same); with `remember` they are registered under `key`.

        Raises:
            WireFormatError: a tensor no protocol message may describe.
        """
        known = self._known.get(key)
        if known is not None and known[0] == tensors:
            return known[1]
        specs = [spec_from_proto(t) for t in tensors]
        if remember:
            self._known[key] = (tensors, specs)
        return specs


# -- Join --------------------------------------------------------------------------


def join_request_to_proto(request: JoinRequest) -> pb.JoinRequest:
    return pb.JoinRequest(job=request.job, tier=request.tier, replica_index=request.replica_index, depth=request.depth)


def join_request_from_proto(message: pb.JoinRequest) -> JoinRequest:
    return JoinRequest(message.job, message.tier, message.replica_index, message.depth)


def _values(message: Any, names: Sequence[str]) -> dict[str, Any]:
    """The fields `names` of a dataclass or protobuf message, by name."""
    return {name: getattr(message, name) for name in names}


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# The plain messages and the protobuf ones share their field names; only the model's
# options (a map) and the wire dtype (an enum) are converted.
def joined_to_proto(joined: Joined) -> pb.JoinResponse:
    m, d, t = joined.model, joined.data, joined.training
    return pb.JoinResponse(
        **_values(joined, ("client_id", "round", "total_rounds", "done")),
        model=pb.ModelDescription(**{**_values(m, _names(ModelDescription)), "options": dict(m.options)}),
        data=pb.DataAssignment(**_values(d, _names(DataAssignment))),
        training=pb.TrainingConfig(
            **{**_values(t, _names(TrainingConfig)), "wire_dtype": dtype_to_proto(t.wire_dtype)}
        ),
    )


def joined_from_proto(message: pb.JoinResponse) -> Joined:
    m, d, t = message.model, message.data, message.training
    return Joined(
        **_values(message, ("client_id", "round", "total_rounds", "done")),
        model=ModelDescription(**{**_values(m, _names(ModelDescription)), "options": dict(m.options)}),
        data=DataAssignment(**_values(d, _names(DataAssignment))),
        training=TrainingConfig(
            **{
                **_values(t, _names(TrainingConfig)),
                "wire_dtype": dtype_from_proto(t.wire_dtype),
                "anchor_depths": tuple(t.anchor_depths),
                "anchor_loss": t.anchor_loss or "none",
            }
        ),
    )


# -- PullModel ---------------------------------------------------------------------


def pull_request_to_proto(request: PullRequest) -> pb.PullModelRequest:
    return pb.PullModelRequest(client_id=request.client_id, min_round=request.min_round, wait_seconds=request.wait_seconds)


def pull_request_from_proto(message: pb.PullModelRequest) -> PullRequest:
    return PullRequest(message.client_id, message.min_round, message.wait_seconds)


def model_header_to_proto(header: ModelHeader) -> pb.ModelChunk:
    """The header chunk of a PullModel stream."""
    return pb.ModelChunk(
        header=pb.ModelHeader(
            ready=header.ready,
            done=header.done,
            round=header.round,
            tensors=[spec_to_proto(s) for s in header.specs],
            total_bytes=header.total_bytes,
        )
    )


def model_header_from_proto(message: pb.ModelHeader, specs: SpecDecoder | None = None) -> ModelHeader:
    """The header of a PullModel stream; `specs` decodes (and remembers) its tensors."""
    decoded = (specs or SpecDecoder()).decode(message.tensors, remember=True) if message.tensors else []
    return ModelHeader(message.ready, message.done, message.round, decoded, message.total_bytes)


# -- PushUpdate --------------------------------------------------------------------


def update_header_to_proto(header: UpdateHeader) -> pb.UpdateChunk:
    """The header chunk of a PushUpdate stream."""
    return pb.UpdateChunk(
        header=pb.UpdateHeader(
            client_id=header.client_id,
            round=header.round,
            num_examples=header.num_examples,
            tensors=[spec_to_proto(s) for s in header.specs],
            train_loss=header.train_loss,
            train_seconds=header.train_seconds,
        )
    )


def update_header_from_proto(message: pb.UpdateHeader, specs: SpecDecoder | None = None, key: Hashable = None) -> UpdateHeader:
    """The header of a PushUpdate stream; `specs` decodes its tensors (the list known
    under `key` when they are the same).

    Raises:
        WireFormatError: a tensor no protocol message may describe.
    """
    decoded = (specs or SpecDecoder()).decode(message.tensors, key)
    return UpdateHeader(message.client_id, message.round, message.num_examples, decoded, message.train_loss, message.train_seconds)


def push_result_to_proto(result: PushResult) -> pb.PushUpdateResponse:
    return pb.PushUpdateResponse(accepted=result.accepted, round=result.round, bytes_received=result.bytes_received)


def push_result_from_proto(message: pb.PushUpdateResponse) -> PushResult:
    return PushResult(message.accepted, message.round, message.bytes_received)
