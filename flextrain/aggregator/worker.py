"""The aggregator's one worker thread.

The event loop only does bookkeeping. Decoding, value checks, folding, merging,
evaluation and checkpoint writes run on this one thread, in the order they were
queued: they are serialised without locks, and the loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Worker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggregator")

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue `fn(*args)` now; await the future (on the running loop) for its result."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)` now, from any thread, without an event loop."""
        return self._executor.submit(fn, *args)

    def shutdown(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._executor.shutdown(wait=True)
