"""flextrain.allocator: freed blocks stay in the process (no page faults on reuse)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap

import pytest

# Rounds of gRPC-like traffic: sixteen 2 MiB messages alive at once, then all freed.
# Prints the minor page faults of the last ten rounds (10 x 16 x 512 pages touched).
_PROBE = textwrap.dedent(
    """
    import resource
    from flextrain.allocator import retain_freed_memory
    applied = retain_freed_memory()
    assert retain_freed_memory() == applied  # once per process, same answer
    def rounds(n):
        for _ in range(n):
            blocks = [bytes(2 << 20) for _ in range(16)]
            del blocks
    rounds(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(10)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _probe(**env: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    return out[0] == "True", int(out[1])


def _glibc() -> bool:
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="the setting exists only in glibc")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    applied, faults = _probe()
    assert applied
    assert faults < 100  # of 81,920 pages touched
    # glibc's defaults hand much of it back after every round, and fault it in again.
    off, faults_off = _probe(FLEXTRAIN_MALLOC_RETAIN="0")
    assert not off
    assert faults_off > 1000


# Blocks allocated by some threads and freed by another, as gRPC's I/O threads and the
# aggregator's loop and worker pass chunks around.
_THREADS_PROBE = textwrap.dedent(
    """
    import queue, resource, threading
    from flextrain import allocator
    assert allocator.retain_freed_memory()
    handoff = queue.Queue(maxsize=8)
    def produce(n):
        for _ in range(n):
            for _ in range(16):
                handoff.put(bytes(2 << 20))
            handoff.put(None)
    def rounds(n):
        threads = [threading.Thread(target=produce, args=(n,)) for _ in range(3)]
        for t in threads:
            t.start()
        ends = 0
        while ends < 3 * n:
            ends += handoff.get() is None
        for t in threads:
            t.join()
    rounds(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(10)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.skipif(not _glibc(), reason="the setting exists only in glibc")
def test_blocks_passed_between_threads_are_reused_from_one_arena() -> None:
    # With an arena per thread (glibc's default) this faults in 500-2,000 pages in most
    # runs, as sub-heaps are unmapped when empty; how many depends on the scheduling.
    done = subprocess.run([sys.executable, "-c", _THREADS_PROBE], capture_output=True, text=True, check=True, timeout=60)
    assert int(done.stdout.split()[-1]) < 100  # of 245,760 pages touched
