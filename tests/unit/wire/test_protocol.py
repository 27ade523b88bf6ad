"""The wire: stubs fresh, tensors round-trip exactly, tokens compared safely."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.wire.auth import metadata, new_token, token_matches
from flextrain.wire.serde import spec_from_proto, spec_to_proto
from flextrain.wire.tensors import (
    CHUNK_BYTES,
    Spec,
    WireFormatError,
    decode,
    encode,
    frame_tensors,
)

REPO = Path(__file__).resolve().parents[3]


def test_checked_in_stubs_match_the_proto() -> None:
    done = subprocess.run(
        [sys.executable, "tools/gen_proto.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "stem.conv.weight": torch.randn(16, 3, 3, 3),
        "stem.bn.num_batches_tracked": torch.tensor(7),
        "head.fc.bias": torch.randn(10),
        "empty": torch.zeros(0, 4),
    }


def test_float32_round_trip_is_exact_and_keeps_order() -> None:
    state = _state()
    encoded = encode(state)
    back = decode(encoded.specs, encoded.payload)
    assert list(back) == list(state)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compressed_transport_halves_float_bytes_and_decodes_to_float32(dtype: torch.dtype) -> None:
    state = _state()
    full, small = encode(state), encode(state, dtype)
    ints = 8  # the int64 counter is never compressed
    assert len(small.payload) - ints == (len(full.payload) - ints) // 2
    back = decode(small.specs, small.payload)
    assert back["stem.conv.weight"].dtype == torch.float32
    assert back["stem.bn.num_batches_tracked"].dtype == torch.int64
    assert torch.allclose(back["stem.conv.weight"], state["stem.conv.weight"], atol=0.02)


def test_decode_without_copy_shares_only_float32_tensors_of_a_writable_buffer() -> None:
    state = _state()
    payload = bytearray(encode(state).payload)
    specs = encode(state).specs
    shared = decode(specs, payload, copy=False)
    copied = decode(specs, payload)
    from_bytes = decode(specs, bytes(payload), copy=False)
    payload[:] = bytes(len(payload))  # zero the buffer: only views see it
    assert torch.count_nonzero(shared["stem.conv.weight"]) == 0
    assert torch.equal(copied["stem.conv.weight"], state["stem.conv.weight"])
    assert torch.equal(from_bytes["stem.conv.weight"], state["stem.conv.weight"])
    assert int(shared["stem.bn.num_batches_tracked"]) == 7, "integer tensors are always copied"


def test_specs_round_trip_through_protobuf() -> None:
    spec = Spec("blocks.3.conv1.weight", (32, 16, 3, 3), torch.bfloat16)
    assert spec_from_proto(pb.TensorSpec.FromString(spec_to_proto(spec).SerializeToString())) == spec


def test_payload_size_must_match_the_specs() -> None:
    encoded = encode(_state())
    with pytest.raises(WireFormatError, match="bytes"):
        decode(encoded.specs, encoded.payload[:-1])
    with pytest.raises(WireFormatError, match="unknown wire dtype"):
        spec_from_proto(pb.TensorSpec(name="x", shape=[1], dtype=0))
    with pytest.raises(WireFormatError, match="negative"):
        spec_from_proto(pb.TensorSpec(name="x", shape=[-1], dtype=pb.DTYPE_FLOAT32))


def test_chunks_respect_the_protocol_size() -> None:
    state = {"big": torch.zeros(3 * CHUNK_BYTES // 4 + 5)}
    framed = frame_tensors(state)
    sizes = [len(pb.ModelChunk.FromString(f).data) for f in framed.frames]
    assert max(sizes) == CHUNK_BYTES and 1 << 20 <= CHUNK_BYTES <= 4 << 20
    assert sum(sizes) == len(encode(state).payload) == framed.nbytes


def test_token_check() -> None:
    token = new_token()
    assert len(token) >= 40
    assert token_matches(metadata(token), token)
    assert not token_matches(metadata(token + "x"), token)
    assert not token_matches((("authorization", token),), token)  # no Bearer scheme
    assert not token_matches(None, token)
    assert not token_matches((("other", "Bearer " + token),), token)


@pytest.mark.parametrize("copy", [True, False])
def test_decode_handles_odd_offsets_empty_and_scalar_tensors(copy: bool) -> None:
    state = {
        "odd": torch.arange(3, dtype=torch.float32),  # 12 bytes: the next tensor starts at 12
        "count": torch.tensor(2**40 + 5),  # int64 at an offset that is not a multiple of 8
        "empty": torch.zeros(2, 0, 3),
        "scalar": torch.tensor(1.5),
        "grid": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
    }
    encoded = encode(state)
    back = decode(encoded.specs, bytearray(encoded.payload), copy=copy)
    assert list(back) == list(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert torch.equal(back[name], value), name
    assert back["grid"].is_contiguous() and back["grid"].stride() == (12, 4, 1)
