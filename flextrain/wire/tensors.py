"""Tensors <-> the bytes of protocol messages (their specs travel through
``flextrain.wire.serde``).

A set of tensors travels as a list of `TensorSpec` (name, shape, dtype) plus one
payload: every tensor's raw little-endian bytes, in spec order, cut into chunks of
`CHUNK_BYTES`. Floating tensors may travel as float16/bfloat16 (compressed transport);
they are always decoded to float32, so merging happens in float32.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

import torch
from torch import Tensor

from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.wire.frames import data_frames

#: Size of one data chunk on the wire (within the 1-4 MiB the protocol allows): 4 KiB
#: under 2 MiB, so a chunk's serialized header (tag + 3-byte length) is 4 bytes and its
#: data starts 4-byte aligned in the received message; a receiver can then use float32
#: values where they arrived (see PayloadPieces) instead of copying them.
CHUNK_BYTES: Final[int] = 2 * 1024 * 1024 - 4096
#: gRPC message limit both sides set: a chunk plus headers, with room to spare.
MAX_MESSAGE_BYTES: Final[int] = 8 * 1024 * 1024


class WireDType(NamedTuple):
    """One element type tensors can travel in."""

    #: The dtype's name in a job spec (``spec.aggregation.compression``) and in messages.
    name: str
    dtype: torch.dtype
    #: Its ``flextrain.v1.DType`` value.
    proto: int


#: Every dtype a tensor may travel in: the one table both sides of the wire (and the
#: job's ``compression`` setting) read. Floating tensors travel in a floating one,
#: integer buffers (BatchNorm counters) as they are.
WIRE_DTYPES: Final[tuple[WireDType, ...]] = (
    WireDType("float32", torch.float32, pb.DTYPE_FLOAT32),
    WireDType("float16", torch.float16, pb.DTYPE_FLOAT16),
    WireDType("bfloat16", torch.bfloat16, pb.DTYPE_BFLOAT16),
    WireDType("int64", torch.int64, pb.DTYPE_INT64),
)
BY_DTYPE: Final[dict[torch.dtype, WireDType]] = {w.dtype: w for w in WIRE_DTYPES}
BY_PROTO: Final[dict[int, WireDType]] = {w.proto: w for w in WIRE_DTYPES}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("flextrain's wire format assumes a little-endian host")


class WireFormatError(ValueError):
    """A message does not describe tensors this protocol can carry."""


def compression_dtype(setting: str) -> torch.dtype:
    """The wire dtype of floating tensors for a job's ``compression`` setting ("none":
    float32)."""
    wire = BY_DTYPE[torch.float32] if setting == "none" else next((w for w in WIRE_DTYPES if w.name == setting), None)
    if wire is None or not wire.dtype.is_floating_point:
        raise WireFormatError(f"compression {setting!r} is not a floating wire dtype")
    return wire.dtype


def wire_dtype_for(tensor_dtype: torch.dtype, compression: torch.dtype) -> torch.dtype:
    """Floating tensors travel in the compression dtype; integer buffers as they are."""
    return compression if tensor_dtype.is_floating_point else tensor_dtype


@dataclass(frozen=True)
class Spec:
    """Name, shape and wire dtype of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @functools.cached_property
    def strides(self) -> tuple[int, ...]:
        """Element strides of a contiguous tensor of this shape."""
        out = []
        step = 1
        for dim in reversed(self.shape):
            out.append(step)
            step *= max(dim, 1)
        return tuple(reversed(out))

    @functools.cached_property
    def num_bytes(self) -> int:
        return math.prod(self.shape) * (torch.finfo(self.dtype).bits if self.dtype.is_floating_point else torch.iinfo(self.dtype).bits) // 8


@dataclass(frozen=True)
class Encoded:
    """Tensors ready to send: their specs and one contiguous payload."""

    specs: list[Spec]
    payload: bytes


@dataclass(frozen=True, eq=False)
class Framed:
    """Tensors as serialized data chunks, ready to send many times (the aggregator
    sends each round's model to many clients: it frames it once). Compared and hashed
    by identity: it is a cache entry, and hashing its bytes would cost a model's worth."""

    specs: list[Spec]
    frames: tuple[bytes, ...]
    nbytes: int


def tensor_views(tensors: Mapping[str, Tensor], compression: torch.dtype = torch.float32) -> tuple[list[Spec], list[memoryview]]:
    """Specs and the raw bytes of each tensor in its wire dtype, as views (no copy for
    contiguous CPU tensors already in that dtype); the views keep the tensors alive."""
    specs = []
    views = []
    for name, tensor in tensors.items():
        wire = tensor.detach()
        dtype = wire_dtype_for(wire.dtype, compression)
        if wire.dtype != dtype or wire.device.type != "cpu":
            wire = wire.to("cpu", dtype)
        if not wire.is_contiguous():
            wire = wire.contiguous()
        specs.append(Spec(name, tuple(wire.shape), dtype))
        if not wire.numel():
            views.append(memoryview(b""))
            continue
        # bfloat16 has no numpy dtype: reinterpret its bytes as int16.
        raw = wire.view(torch.int16) if dtype == torch.bfloat16 else wire
        views.append(raw.numpy().data.cast("B"))
    return specs, views


def frame_tensors(tensors: Mapping[str, Tensor], compression: torch.dtype = torch.float32, chunk_bytes: int = CHUNK_BYTES) -> Framed:
    """Tensors serialized as data chunks of at most `chunk_bytes` (one copy per byte)."""
    return frame_views(*tensor_views(tensors, compression), chunk_bytes)


def frame_views(specs: list[Spec], views: list[memoryview], chunk_bytes: int = CHUNK_BYTES) -> Framed:
    """:func:`frame_tensors` for views :func:`tensor_views` already took (e.g. a subset
    of a model whose views are shared by several prefixes)."""
    return Framed(specs, tuple(data_frames(views, chunk_bytes)), sum(len(v) for v in views))


class ReceiveBuffer:
    """Where tensors' bytes are received, kept from one transfer to the next.

    A new buffer the size of a model costs more than the bytes it receives: the kernel
    maps and zeroes each of its pages on first touch (allocations this large bypass the
    heap, see flextrain.allocator). Reused, it is already resident. It grows to the
    largest size taken and keeps that memory while it lives.
    """

    def __init__(self) -> None:
        self._data = bytearray()

    def take(self, size: int) -> memoryview:
        """A writable view of exactly `size` bytes; what an earlier take returned must no
        longer be in use."""
        if len(self._data) < size:
            self._data = bytearray()  # drop the old one first: never hold both
            self._data = bytearray(size)
        return memoryview(self._data)[:size]


class Fed(NamedTuple):
    """What :meth:`PayloadPieces.feed` found in one chunk."""

    #: ``(tensor name, element offset, 1-D values)`` in payload order.
    pieces: list[tuple[str, int, Tensor]]
    #: The whole chunk read as float32 when that is how its floating values travel
    #: (every floating tensor float32, chunk aligned to whole values), else None: one
    #: pass over it checks them all. Integer values are read as float32 too, so only a
    #: check that passes is conclusive (see ``flextrain.aggregator.state``).
    float32: Tensor | None


class PayloadPieces:
    """Cuts a payload that arrives in chunks into pieces of its tensors, without
    assembling it: each piece is a view of the chunk it arrived in wherever the values
    lie aligned in memory (the usual case for float32 data chunks of
    :data:`CHUNK_BYTES`), and a small copy otherwise (a value split between two chunks,
    an unaligned chunk). Pieces keep their chunk alive.

    ``feed`` the payload's chunks in order; ``complete`` tells when every byte the specs
    describe has arrived.
    """

    def __init__(self, specs: list[Spec]) -> None:
        self._specs = [s for s in specs if s.num_bytes]  # empty tensors have no bytes
        self.total = sum(s.num_bytes for s in self._specs)
        #: Bytes fed so far.
        self.received = 0
        #: Bytes that had to be copied because they were not aligned in their chunk.
        self.copied = 0
        self._index = 0  # the tensor the next byte belongs to
        self._done = 0  # bytes of that tensor fed so far
        self._carry = bytearray()  # the start of a value split between chunks
        self._float32 = all(s.dtype == torch.float32 for s in self._specs if s.dtype.is_floating_point)

    @property
    def complete(self) -> bool:
        return self.received == self.total

    def feed(self, data: bytes | bytearray | memoryview) -> Fed:
        """The pieces of the payload's next bytes, `data`.

        Raises:
            WireFormatError: `data` runs past the end of the payload.
        """
        n = len(data)
        if n > self.total - self.received:
            raise WireFormatError(f"payload carries more than the {self.total} bytes its tensor specs describe")
        if not n:
            return Fed([], None)
        with warnings.catch_warnings():
            # Received messages are read-only bytes; pieces are only read.
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.frombuffer(data, dtype=torch.uint8)
        base = raw.data_ptr()
        float32 = None
        if self._float32 and base % 4 == 0 and n % 4 == 0 and self.received % 4 == 0:
            float32 = raw.view(torch.float32)
        pieces: list[tuple[str, int, Tensor]] = []
        pos = 0
        while pos < n:
            spec = self._specs[self._index]
            item = spec.dtype.itemsize
            take = min(spec.num_bytes - self._done, n - pos)
            if self._carry:  # complete the value split at the end of the previous chunk
                part = min(item - len(self._carry), take)
                self._carry += raw[pos : pos + part].numpy().tobytes()
                pos, take, self._done = pos + part, take - part, self._done + part
                if len(self._carry) == item:
                    value = torch.frombuffer(self._carry, dtype=spec.dtype)
                    pieces.append((spec.name, self._done // item - 1, value))
                    self.copied += item
                    self._carry = bytearray()
            whole = take // item * item
            if whole:
                piece = raw[pos : pos + whole]
                if pos % item or (base + pos) % item:
                    piece = piece.clone()  # unaligned: a reinterpreting view needs alignment
                    self.copied += whole
                pieces.append((spec.name, self._done // item, piece.view(spec.dtype)))
                pos, self._done = pos + whole, self._done + whole
            rest = take - whole
            if rest:  # a value split between this chunk and the next
                self._carry = bytearray(raw[pos : pos + rest].numpy().tobytes())
                pos, self._done = pos + rest, self._done + rest
            if self._done == spec.num_bytes:
                self._index, self._done = self._index + 1, 0
        self.received += n
        return Fed(pieces, float32)


def encode(tensors: Mapping[str, Tensor], compression: torch.dtype = torch.float32) -> Encoded:
    """Serialise tensors (in mapping order), floating ones cast to `compression`, into
    one payload: the inverse of :func:`decode` (what travels is :func:`frame_tensors`,
    the same bytes cut into chunks)."""
    specs, views = tensor_views(tensors, compression)
    return Encoded(specs, b"".join(views))


def decode(specs: list[Spec], payload: bytes | bytearray | memoryview, *, copy: bool = True) -> dict[str, Tensor]:
    """Tensors from specs + payload; floating ones come back as float32. The payload
    must hold exactly the bytes the specs describe.

    With ``copy=False`` and a writable payload (a bytearray the caller owns and will not
    modify again), float32 tensors are views into the payload instead of copies; the
    tensors keep the payload alive. Other tensors are always new.
    """
    expected = sum(s.num_bytes for s in specs)
    if len(payload) != expected:
        raise WireFormatError(f"payload has {len(payload)} bytes, the tensor specs describe {expected}")
    share = not copy and not memoryview(payload).readonly
    out: dict[str, Tensor] = {}
    if not expected:
        return {spec.name: torch.empty(spec.shape, dtype=spec.dtype) for spec in specs}
    with warnings.catch_warnings():
        # A read-only payload (bytes) is fine: what is not shared is copied below.
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(payload, dtype=torch.uint8)  # one view, sliced per tensor
    # Shared float32 tensors are cut straight from one float32 view (one call each).
    floats = raw.view(torch.float32) if share and expected % 4 == 0 else None
    offset = 0
    for spec in specs:
        size = spec.num_bytes
        aligned = offset % spec.dtype.itemsize == 0
        if floats is not None and size and aligned and spec.dtype == torch.float32:
            out[spec.name] = floats.as_strided(spec.shape, spec.strides, offset // 4)
            offset += size
            continue
        piece = raw[offset : offset + size]
        offset += size
        if size == 0:
            out[spec.name] = torch.empty(spec.shape, dtype=spec.dtype)
            continue
        copied = not aligned
        if copied:  # a reinterpreting view needs an aligned start: copy the bytes first
            piece = piece.clone()
        tensor = piece.view(spec.dtype).view(spec.shape)
        if spec.dtype.is_floating_point and spec.dtype != torch.float32:
            tensor = tensor.float()
        elif not copied:
            tensor = tensor.clone()
        out[spec.name] = tensor
    return out
