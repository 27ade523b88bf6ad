"""A payload cut into tensor pieces as its chunks arrive: exact for any chunking, and
without copies for the aligned data chunks FlexTrain's own clients send."""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor

from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.wire.frames import data_frames, read_data
from flextrain.wire.tensors import (
    CHUNK_BYTES,
    PayloadPieces,
    WireFormatError,
    decode,
    encode,
    tensor_views,
)


def _state() -> dict[str, Tensor]:
    torch.manual_seed(0)
    return {
        "conv.weight": torch.randn(16, 3, 3, 3),
        "bn.num_batches_tracked": torch.tensor(7),
        "empty": torch.zeros(0, 4),
        "bn.running_var": torch.rand(16),
        "fc.weight": torch.randn(10, 64),
        "odd": torch.randn(3),  # leaves the next tensor at an offset that is not 8-aligned
        "counter": torch.tensor(-5),
        "fc.bias": torch.randn(10),
    }


def _assemble(specs: list, fed: list[tuple[str, int, Tensor]]) -> dict[str, Tensor]:
    out = {s.name: torch.empty(s.shape, dtype=s.dtype) for s in specs}
    for name, offset, values in fed:
        assert values.dim() == 1
        out[name].view(-1)[offset : offset + values.numel()] = values
    return out


def _chunks(payload: bytes, sizes: list[int], misalign: int) -> list[memoryview]:
    out, pos = [], 0
    for size in sizes:
        # Each chunk inside a bytes object at an offset, as a received message is.
        holder = bytes(misalign) + payload[pos : pos + size]
        out.append(memoryview(holder)[misalign:])
        pos += size
    return out


@pytest.mark.parametrize("compression", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(6))
def test_any_chunking_gives_back_exactly_the_tensors(compression: torch.dtype, seed: int) -> None:
    encoded = encode(_state(), compression)
    rng = random.Random(seed)
    sizes, left = [], len(encoded.payload)
    while left:
        sizes.append(min(left, rng.choice([1, 2, 3, 5, 8, 64, 1000, 5000])))
        left -= sizes[-1]
    pieces = PayloadPieces(encoded.specs)
    fed = []
    for chunk in _chunks(encoded.payload, sizes, misalign=rng.choice([0, 1, 4, 5])):
        assert not pieces.complete
        fed += pieces.feed(chunk).pieces
    assert pieces.complete and pieces.received == len(encoded.payload)
    back = _assemble(encoded.specs, fed)
    expected = decode(encoded.specs, encoded.payload)
    for spec in encoded.specs:
        want = expected[spec.name].to(spec.dtype)
        assert torch.equal(back[spec.name], want), spec.name
    # The offsets of one tensor's pieces follow each other.
    for spec in encoded.specs:
        offsets = [(o, v.numel()) for n, o, v in fed if n == spec.name]
        assert [o for o, _ in offsets] == [sum(k for _, k in offsets[:i]) for i in range(len(offsets))]


def test_aligned_data_chunks_arrive_as_views_without_copies() -> None:
    state = {"a": torch.randn(700_000), "n": torch.tensor(3), "b": torch.randn(300_000)}
    specs, views = tensor_views(state)
    frames = list(data_frames(views, CHUNK_BYTES))
    assert len(frames) == 2
    pieces = PayloadPieces(specs)
    fed = []
    for f in frames:
        # What the servicer gets: a view of the data of the received message.
        data = read_data(pb.UpdateChunk.FromString(f).SerializeToString())
        assert data is not None
        result = pieces.feed(data)
        assert result.float32 is not None, "float32-only payload in aligned chunks: one flat view"
        fed += result.pieces
    assert pieces.complete
    assert pieces.copied <= 8, "only the int64 counter (unaligned in its chunk) is copied"
    back = _assemble(specs, fed)
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_compressed_or_unaligned_payloads_have_no_flat_float32_view() -> None:
    state = {"a": torch.randn(100)}
    half = encode(state, torch.float16)
    assert PayloadPieces(half.specs).feed(half.payload).float32 is None
    full = encode(state)
    pieces = PayloadPieces(full.specs)
    assert pieces.feed(memoryview(full.payload)[:6]).float32 is None
    assert pieces.feed(memoryview(full.payload)[6:]).float32 is None, "starts inside a value"


def test_bytes_past_the_end_are_refused() -> None:
    encoded = encode({"a": torch.randn(4)})
    pieces = PayloadPieces(encoded.specs)
    pieces.feed(encoded.payload[:10])
    with pytest.raises(WireFormatError, match="more than the 16 bytes"):
        pieces.feed(encoded.payload[10:] + b"x")
    assert pieces.received == 10
