"""Keep freed memory in the process: the allocator setting of the data-moving processes.

The aggregator and the trainers allocate and free buffers of megabytes at a high rate:
gRPC turns every 2 MiB chunk into a new bytes object, each round's model is framed
into new chunks, merges produce new tensors. By default glibc serves such sizes with
fresh ``mmap`` calls (or trims them off the heap on free), so every one of them
page-faults again and the kernel zeroes it again: on the benchmark machine that cost
more CPU than moving the bytes (docs/aggregator.md, "Memory and the hot path").

:func:`retain_freed_memory` tells glibc to serve blocks up to 32 MiB (its maximum)
from the heap, to keep freed heap memory for reuse instead of handing it back, and to
use one heap (arena) for all threads. The process's resident memory then stays near
its peak between rounds instead of dropping after each one; blocks above 32 MiB (a
whole large tensor) are still mapped per allocation, which is why the hot paths also
reuse their large buffers.

One arena matters as much as the other two: by default every thread that allocates
(gRPC's I/O threads, the aggregator's worker, a trainer's client threads) gets an arena
of its own, made of 64 MiB sub-heaps that glibc unmaps whenever one is entirely free,
whatever the trim threshold. With megabyte chunks passing from thread to thread, heaps
were mapped and unmapped all the time: 15,000 page faults a second in the aggregation
benchmark, and up to 2x the model of extra resident memory in arenas that could not
serve each other. With one arena: 60 a second. The cost, threads sharing one heap lock,
did not show: these processes allocate megabytes, not millions of small objects.

It acts only on glibc (Linux distributions other than Alpine/musl); elsewhere it does
nothing. ``FLEXTRAIN_MALLOC_RETAIN=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Final

from flextrain.contract.env import MALLOC_RETAIN

log = logging.getLogger("flextrain")

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD: Final[int] = -1
_M_TOP_PAD: Final[int] = -2
_M_MMAP_THRESHOLD: Final[int] = -3
_M_ARENA_MAX: Final[int] = -8

#: Largest block glibc lets mallopt move off mmap (HEAP_MAX_SIZE / 2 on 64-bit).
MMAP_THRESHOLD: Final[int] = 32 * 1024 * 1024
#: Free memory at the top of the heap kept before trimming (mallopt's largest: 2 GiB).
TRIM_THRESHOLD: Final[int] = 2**31 - 1
#: Extra heap grown (and kept) each time the heap must grow.
TOP_PAD: Final[int] = 64 * 1024 * 1024
#: Arenas: one, shared by every thread (threads started before the call keep theirs).
ARENA_MAX: Final[int] = 1

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the settings once per process, before it starts threads; True when they
    are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(MALLOC_RETAIN, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting; the allocator keeps its defaults where it did")
    _applied = ok
    return ok
