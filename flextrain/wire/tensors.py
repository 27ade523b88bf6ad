"""Tensors <-> protocol messages: one module of symmetric to/from pairs.

A set of tensors travels as a list of `TensorSpec` (name, shape, dtype) plus one
payload: every tensor's raw little-endian bytes, in spec order, cut into chunks of
`CHUNK_BYTES`. Floating tensors may travel as float16/bfloat16 (compressed transport);
they are always decoded to float32, so merging happens in float32.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor

from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.wire.frames import data_frames

#: Size of one data chunk on the wire (within the 1-4 MiB the protocol allows).
CHUNK_BYTES: Final[int] = 2 * 1024 * 1024
#: gRPC message limit both sides set: a chunk plus headers, with room to spare.
MAX_MESSAGE_BYTES: Final[int] = 8 * 1024 * 1024

WIRE_DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "none": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

_TO_PROTO: Final[dict[torch.dtype, int]] = {
    torch.float32: pb.DTYPE_FLOAT32,
    torch.float16: pb.DTYPE_FLOAT16,
    torch.bfloat16: pb.DTYPE_BFLOAT16,
    torch.int64: pb.DTYPE_INT64,
}
_FROM_PROTO: Final[dict[int, torch.dtype]] = {v: k for k, v in _TO_PROTO.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("flextrain's wire format assumes a little-endian host")


class WireFormatError(ValueError):
    """A message does not describe tensors this protocol can carry."""


def dtype_to_proto(dtype: torch.dtype) -> int:
    try:
        return _TO_PROTO[dtype]
    except KeyError:
        raise WireFormatError(f"dtype {dtype} cannot travel on the wire") from None


def dtype_from_proto(value: int) -> torch.dtype:
    try:
        return _FROM_PROTO[value]
    except KeyError:
        raise WireFormatError(f"unknown wire dtype {value}") from None


def wire_dtype_for(tensor_dtype: torch.dtype, compression: torch.dtype) -> torch.dtype:
    """Floating tensors travel in the compression dtype; integer buffers as they are."""
    return compression if tensor_dtype.is_floating_point else tensor_dtype


@dataclass(frozen=True)
class Spec:
    """Name, shape and wire dtype of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def num_bytes(self) -> int:
        return math.prod(self.shape) * (torch.finfo(self.dtype).bits if self.dtype.is_floating_point else torch.iinfo(self.dtype).bits) // 8


def spec_to_proto(spec: Spec) -> pb.TensorSpec:
    return pb.TensorSpec(name=spec.name, shape=list(spec.shape), dtype=dtype_to_proto(spec.dtype))  # type: ignore[arg-type]


def spec_from_proto(message: pb.TensorSpec) -> Spec:
    if any(d < 0 for d in message.shape):
        raise WireFormatError(f"tensor {message.name!r} has a negative dimension {list(message.shape)}")
    return Spec(message.name, tuple(int(d) for d in message.shape), dtype_from_proto(message.dtype))


@dataclass(frozen=True)
class Encoded:
    """Tensors ready to send: their specs and one contiguous payload."""

    specs: list[Spec]
    payload: bytes


@dataclass(frozen=True)
class Framed:
    """Tensors as serialized data chunks, ready to send many times (the aggregator
    sends each round's model to many clients: it frames it once)."""

    specs: list[Spec]
    frames: tuple[bytes, ...]
    nbytes: int


def tensor_views(tensors: Mapping[str, Tensor], compression: torch.dtype = torch.float32) -> tuple[list[Spec], list[memoryview]]:
    """Specs and the raw bytes of each tensor in its wire dtype, as views (no copy for
    contiguous CPU tensors already in that dtype); the views keep the tensors alive."""
    specs = []
    views = []
    for name, tensor in tensors.items():
        wire = tensor.detach().to("cpu", wire_dtype_for(tensor.dtype, compression)).contiguous()
        specs.append(Spec(name, tuple(wire.shape), wire.dtype))
        # bfloat16 has no numpy dtype: reinterpret its bytes as int16.
        raw = wire.view(torch.int16) if wire.dtype == torch.bfloat16 else wire
        views.append(raw.reshape(-1).numpy().data.cast("B"))
    return specs, views


def frame_tensors(tensors: Mapping[str, Tensor], compression: torch.dtype = torch.float32, chunk_bytes: int = CHUNK_BYTES) -> Framed:
    """Tensors serialized as data chunks of at most `chunk_bytes` (one copy per byte)."""
    specs, views = tensor_views(tensors, compression)
    return Framed(specs, tuple(data_frames(views, chunk_bytes)), sum(len(v) for v in views))


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
    offset = 0
    for spec in specs:
        size = spec.num_bytes
        if size == 0:
            out[spec.name] = torch.empty(spec.shape, dtype=spec.dtype)
            continue
        with warnings.catch_warnings():
            # A read-only payload (bytes) is fine: the result is copied below.
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(payload, dtype=spec.dtype, count=size // spec.dtype.itemsize, offset=offset)
        tensor = flat.reshape(spec.shape)
        if spec.dtype.is_floating_point and spec.dtype != torch.float32:
            tensor = tensor.float()
        elif not (share and spec.dtype == torch.float32 and offset % 4 == 0):
            tensor = tensor.clone()
        out[spec.name] = tensor
        offset += size
    return out


def float32_view(specs: list[Spec], payload: bytes | bytearray | memoryview) -> Tensor | None:
    """The whole payload as one float32 vector when every floating tensor in it travels
    as float32 (None otherwise), for one-pass checks over all values. Integer tensors'
    bytes are included and read as float32: only use it for checks that can be
    confirmed per tensor (see ``flextrain.aggregator.state``)."""
    if len(payload) % 4 or any(s.dtype.is_floating_point and s.dtype != torch.float32 for s in specs):
        return None
    if not payload:
        return torch.empty(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(payload, dtype=torch.float32)
