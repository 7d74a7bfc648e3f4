"""Cleanup worker threads: stop-and-remove off the RPC path, drained on shutdown.

A release that removes a sandbox returns at once; the stop (bounded grace) and
the removal run here. Shutdown calls :meth:`CleanupPool.drain`, which waits
(bounded) until every queued job has finished, so a SIGTERM right after a few
releases leaves no container behind.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    key: str
    run: Callable[[], None]


class CleanupPool:
    """A fixed set of daemon threads running cleanup jobs from a queue.

    Args:
        workers: Number of threads.
        on_failure: Called with (key, exception) when a job raises.
    """

    def __init__(
        self,
        workers: int,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._on_failure = on_failure
        self._lock = threading.Condition()
        self._pending: dict[str, int] = {}
        self._outstanding = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"sandbox-cleanup-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str, job: Callable[[], None]) -> None:
        """Queues ``job`` (identified by ``key``, e.g. a container id).

        Raises:
            RuntimeError: The pool was closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("cleanup pool is closed")
            self._outstanding += 1
            self._pending[key] = self._pending.get(key, 0) + 1
        self._queue.put(_Job(key, job))

    def is_pending(self, key: str) -> bool:
        """Whether a job for ``key`` is queued or running."""
        with self._lock:
            return self._pending.get(key, 0) > 0

    @property
    def outstanding(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return self._outstanding

    def drain(self, timeout: float) -> bool:
        """Waits until every submitted job finished, at most ``timeout`` seconds.

        Returns:
            True when nothing is outstanding.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            done = self._outstanding == 0
        if not done:
            log.warning("cleanup drain timed out", extra={"outstanding": self.outstanding})
        return done

    def close(self, timeout: float) -> bool:
        """Drains (bounded), then stops the threads. Returns whether the drain finished."""
        done = self.drain(timeout)
        with self._lock:
            self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        return done

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job.run()
            except Exception as exc:  # one failed cleanup must not kill the worker
                log.warning("cleanup job failed", extra={"sandbox_id": job.key, "error": str(exc)})
                if self._on_failure is not None:
                    self._on_failure(job.key, exc)
            finally:
                with self._lock:
                    self._outstanding -= 1
                    self._pending[job.key] -= 1
                    if not self._pending[job.key]:
                        del self._pending[job.key]
                    self._lock.notify_all()
