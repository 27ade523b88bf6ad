"""Data chunks of PullModel and PushUpdate, framed by hand: the protocol's hot path.

A data chunk is a ``ModelChunk`` or ``UpdateChunk`` with only ``data`` set. Its
protobuf encoding is one tag byte, the length as a varint, then the bytes. Writing that
encoding straight from the tensors' memory (:func:`data_frames`) and reading ``data`` as
a view of the received message (:func:`read_data`) skips the protobuf message objects
in between, which copy every byte twice on each side. The bytes on the wire are exactly
what protobuf produces, so clients built from the generated stubs interoperate (a test
checks both directions against the generated classes); headers go through protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final, TypeVar

from google.protobuf.message import DecodeError, Message

from flextrain.proto.v1 import aggregator_pb2 as pb

#: Initial metadata key the aggregator sends when it starts reading a PushUpdate's
#: data. Pushes are received one at a time; a client waits for the aggregator's initial
#: metadata before it sends data chunks, so a push waiting its turn holds no data in
#: either side's buffers. (A client that sends at once still works: flow control holds
#: its data until its turn.)
PUSH_READY_KEY: Final[str] = "flextrain-push-ready"

#: Field number of ``data`` in ModelChunk and UpdateChunk.
DATA_FIELD: Final[int] = 2
_LENGTH_DELIMITED: Final[int] = 2
_DATA_TAG: Final[int] = (DATA_FIELD << 3) | _LENGTH_DELIMITED

for _message in (pb.ModelChunk, pb.UpdateChunk):  # the framing depends on it
    assert _message.DESCRIPTOR.fields_by_name["data"].number == DATA_FIELD


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(raw: bytes, offset: int) -> tuple[int, int] | None:
    """(value, offset after it), or None when `raw` ends inside the varint."""
    value = shift = 0
    while offset < len(raw) and shift < 64:
        byte = raw[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
    return None


def frame(parts: Sequence[bytes | memoryview]) -> bytes:
    """One serialized data chunk holding the concatenation of `parts` (one copy)."""
    size = sum(len(p) for p in parts)
    return b"".join([bytes((_DATA_TAG,)), _varint(size), *parts])


def data_frames(buffers: Iterable[memoryview], chunk_bytes: int) -> Iterator[bytes]:
    """The concatenation of `buffers`, cut into data chunks of `chunk_bytes` (the last
    one shorter), each serialized; every byte is copied once, into its chunk."""
    pending: list[memoryview] = []
    size = 0
    for buffer in buffers:
        view = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
        start = 0
        while start < len(view):
            take = min(chunk_bytes - size, len(view) - start)
            pending.append(view[start : start + take])
            size += take
            start += take
            if size == chunk_bytes:
                yield frame(pending)
                pending, size = [], 0
    if pending:
        yield frame(pending)


def read_data(raw: bytes) -> memoryview | None:
    """The ``data`` of a serialized chunk, as a view of `raw`, when the chunk is a data
    chunk in the canonical form :func:`frame` writes; None for anything else (a header,
    or another encoder's framing), which the caller parses with protobuf."""
    if not raw or raw[0] != _DATA_TAG:
        return None
    read = _read_varint(raw, 1)
    if read is None or read[1] + read[0] != len(raw):
        return None
    return memoryview(raw)[read[1] :]


def serialize_chunk(chunk: pb.ModelChunk | pb.UpdateChunk | bytes) -> bytes:
    """Serializer of the chunk streams: headers are messages, data chunks come framed."""
    return chunk if isinstance(chunk, bytes) else chunk.SerializeToString()


def parse_model_chunk(raw: bytes) -> pb.ModelChunk | memoryview:
    """Response deserializer of PullModel: a data view, or the parsed message."""
    data = read_data(raw)
    return pb.ModelChunk.FromString(raw) if data is None else data


#: The largest header chunk a PushUpdate may start with: ample for any model this
#: protocol carries (ResNet-110's header is 8 KiB; 1 MiB lists some 20,000 tensors),
#: and a bound on what one header costs to parse before its tensors are counted.
MAX_HEADER_BYTES: Final[int] = 1024 * 1024


class Undecodable:
    """A received message that did not decode: what the deserializer hands on instead of
    raising (an exception there becomes an UNKNOWN status and an error log per call);
    the servicer refuses it as ``malformed``."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


def parse_update_chunk(raw: bytes) -> pb.UpdateChunk | memoryview | Undecodable:
    """Request deserializer of PushUpdate: a data view, the parsed message, or
    Undecodable (bytes that are no UpdateChunk, or a header over MAX_HEADER_BYTES)."""
    data = read_data(raw)
    if data is not None:
        return data
    if len(raw) > MAX_HEADER_BYTES:
        return Undecodable(f"a non-data chunk of {len(raw)} bytes; a header may have at most {MAX_HEADER_BYTES}")
    return decode_message(pb.UpdateChunk, raw)


M = TypeVar("M", bound=Message)


def decode_message(cls: type[M], raw: bytes) -> M | Undecodable:
    """`raw` parsed as a `cls`, or Undecodable (never raises)."""
    try:
        message: M = cls.FromString(raw)
    except DecodeError as exc:
        return Undecodable(f"{len(raw)} bytes that are no valid {cls.__name__} ({exc})")
    return message
