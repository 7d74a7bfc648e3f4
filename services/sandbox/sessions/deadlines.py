"""Command timeouts of every session on one thread.

A ``threading.Timer`` per command costs a thread start on the path of every
command (a few hundred microseconds on a loaded machine, a good part of a
``true``'s budget); one thread waiting on a heap of deadlines costs a lock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Deadline:
    """One scheduled call; :meth:`cancel` before it is due and it never runs."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        """Drops the call (a no-op once it ran)."""
        self.cancelled = True


class Deadlines:
    """Runs callbacks at their deadlines on one daemon thread (started on first use)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline, Callable[[], object]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def after(self, seconds: float, fn: Callable[[], object]) -> Deadline:
        """Calls ``fn`` in ``seconds`` unless cancelled first."""
        handle = Deadline()
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), handle, fn))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, daemon=True, name="session-deadlines"
                )
                self._thread.start()
            self._cond.notify()
        return handle

    def close(self) -> None:
        """Stops the thread; pending calls never run."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    # Cancelled entries are dropped as they surface, so the
                    # heap holds at most the commands running or recently run.
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, _, handle, fn = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            try:
                fn()
            except Exception:  # one failing callback must not end every timeout
                log.exception("session deadline callback failed")
