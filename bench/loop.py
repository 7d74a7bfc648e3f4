"""One asyncio event loop for every ``grpc.aio`` client of a benchmark run.

gRPC's aio poller hands completions to the loop it first ran on; a second
loop in the same process (a fresh ``asyncio.run`` per scenario), or a closed
one, makes it log "Event loop is closed" for every later completion. So
every aio client of the bench process runs on this one loop, in a daemon
thread started on first use and never closed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_started: list[asyncio.AbstractEventLoop] = []


def _shared() -> asyncio.AbstractEventLoop:
    # Two threads may ask at once; the lock keeps it to one loop.
    with _lock:
        if not _started:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="bench-aio", daemon=True).start()
            _started.append(loop)
        return _started[0]


def submit(coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Schedule ``coro`` on the shared loop; the future gives its result."""
    return asyncio.run_coroutine_threadsafe(coro, _shared())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the shared loop and wait for its result."""
    return submit(coro).result()


def call_soon(fn: Any, *args: Any) -> None:
    """Call ``fn(*args)`` on the shared loop's thread."""
    _shared().call_soon_threadsafe(fn, *args)
