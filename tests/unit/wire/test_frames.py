"""Hand-framed data chunks are byte-for-byte what protobuf writes and reads."""

from __future__ import annotations

import pytest
import torch

from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.wire.frames import (
    data_frames,
    frame,
    parse_model_chunk,
    parse_update_chunk,
    read_data,
    serialize_chunk,
)
from flextrain.wire.tensors import decode, encode, frame_tensors, tensor_views


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16_384, 2 * 1024 * 1024 + 3])
@pytest.mark.parametrize("message", [pb.ModelChunk, pb.UpdateChunk])
def test_a_frame_is_the_protobuf_encoding_of_a_data_chunk(size: int, message: type) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    framed = frame([memoryview(data)])
    assert framed == message(data=data).SerializeToString()
    assert message.FromString(framed).data == data
    view = read_data(message(data=data).SerializeToString())
    assert view is not None and view.tobytes() == data


def test_data_frames_cut_any_buffers_into_chunks_of_the_given_size() -> None:
    buffers = [memoryview(bytes([i]) * n) for i, n in enumerate([5, 0, 17, 3, 40])]
    frames = list(data_frames(buffers, 16))
    chunks = [pb.UpdateChunk.FromString(f).data for f in frames]
    assert [len(c) for c in chunks] == [16, 16, 16, 16, 1]
    assert b"".join(chunks) == b"".join(b.tobytes() for b in buffers)


def test_headers_and_foreign_framings_go_through_protobuf() -> None:
    header = pb.UpdateChunk(header=pb.UpdateHeader(client_id="deep-0", round=3))
    assert read_data(header.SerializeToString()) is None
    parsed = parse_update_chunk(header.SerializeToString())
    assert isinstance(parsed, pb.UpdateChunk) and parsed.header.client_id == "deep-0"
    # A data chunk followed by a second copy of the field: valid protobuf (last wins),
    # not the canonical form: parsed by protobuf, not misread as one view.
    twice = pb.ModelChunk(data=b"old").SerializeToString() + pb.ModelChunk(data=b"new").SerializeToString()
    assert read_data(twice) is None
    model = parse_model_chunk(twice)
    assert isinstance(model, pb.ModelChunk) and model.data == b"new"
    view = parse_model_chunk(pb.ModelChunk(data=b"abc").SerializeToString())
    assert isinstance(view, memoryview) and view.tobytes() == b"abc"
    assert serialize_chunk(header) == header.SerializeToString()
    assert serialize_chunk(b"\x12\x00") == b"\x12\x00"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_framed_tensors_carry_the_encoded_payload(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    state = {
        "a": torch.randn(70, 33),
        "n": torch.tensor(5),
        "empty": torch.zeros(0),
        "b": torch.randn(1000).t(),
    }
    framed = frame_tensors(state, dtype, chunk_bytes=1000)
    payload = b"".join(pb.ModelChunk.FromString(f).data for f in framed.frames)
    reference = encode(state, dtype)
    assert framed.specs == reference.specs and payload == bytes(reference.payload)
    assert framed.nbytes == len(payload) and all(len(f) <= 1000 + 3 for f in framed.frames)
    back = decode(framed.specs, payload)
    assert torch.equal(back["n"], state["n"])
    specs, views = tensor_views(state, dtype)
    assert specs == reference.specs and sum(len(v) for v in views) == len(payload)


def test_undecodable_chunks_are_handed_on_not_raised() -> None:
    from flextrain.wire.frames import (
        MAX_HEADER_BYTES,
        Undecodable,
        decode_message,
        parse_update_chunk,
    )

    garbage = parse_update_chunk(b"\xff\xff\xff\xff\x0f")
    assert isinstance(garbage, Undecodable) and "UpdateChunk" in garbage.what
    huge = pb.UpdateChunk(header=pb.UpdateHeader(client_id="x" * (MAX_HEADER_BYTES + 1))).SerializeToString()
    oversized = parse_update_chunk(huge)
    assert isinstance(oversized, Undecodable) and str(len(huge)) in oversized.what
    assert isinstance(decode_message(pb.JoinRequest, b"\x12\x02\xff\xfe"), Undecodable)  # tier: no UTF-8
    assert decode_message(pb.JoinRequest, pb.JoinRequest(tier="ok").SerializeToString()).tier == "ok"
