"""One Exec's output, read in the blocking pool and handed to a ``grpc.aio`` handler.

The Docker SDK blocks: a command's output is read from its socket by a pool
thread, one event per step, while the handler's coroutine awaits the step.
The hard part is the end a caller chooses. A client that cancels or goes away
ends the handler's coroutine (a ``CancelledError`` at its await) while a pool
thread may still be blocked reading a command that prints nothing; the
command must still be killed. :meth:`ExecStream.abandon` does that on a
separate thread pool (it must never queue behind the readers it is there to
unblock): run the command's cancel (freeze and kill its tree, close the
socket, which wakes the reader), wait for the step in flight, then close the
generator, whose ``finally`` stops whatever was not finished.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable, Generator
from concurrent import futures

from services.runtime.errors import Cancelled
from services.sandbox.model import ExecExit, OutputChunk

log = logging.getLogger(__name__)

Event = OutputChunk | ExecExit
#: ``manager.exec`` with the sandbox and the command bound: takes ``on_cancel``.
Start = Callable[[Callable[[Callable[[], None]], object]], Generator[Event, None, None]]
#: Longest an abandon waits for the step in flight after the cancel closed its socket.
STEP_WAIT_SECONDS = 30.0


class ExecStream:
    """The events of one Exec, stepped in ``pool``; abandoned, the command is killed.

    Args:
        start: Starts the exec lazily (nothing runs before the first step);
            it registers the command's cancel through its argument.
        pool: The bounded pool for engine calls (one step at a time holds a thread).
        cancels: Where abandons run, apart from ``pool``.
    """

    def __init__(
        self, start: Start, pool: futures.ThreadPoolExecutor, cancels: futures.ThreadPoolExecutor
    ) -> None:
        self._pool = pool
        self._cancels = cancels
        # Guards the hand-over between the first step (a pool thread, which
        # registers the cancel) and an abandon (the loop): exactly one of them
        # sees the other, so a command is either never started or cancelled.
        self._lock = threading.Lock()
        self._cancel: Callable[[], None] | None = None
        self._step: futures.Future[Event | None] | None = None
        self._abandoned = False
        self._ended = False
        self._events = start(self._register)

    def _register(self, cancel: Callable[[], None]) -> None:
        # On the pool thread, inside the first step, before the command starts.
        with self._lock:
            if self._abandoned:
                raise Cancelled("the caller went away before the command started")
            self._cancel = cancel

    def _next(self) -> Event | None:
        try:
            event = next(self._events, None)
        except BaseException:
            self._ended = True  # the generator raised: it is closed
            raise
        if event is None:
            # Set outside the lock: an abandon that reads it a moment too
            # early only cancels a finished run and closes a spent generator,
            # both of which do nothing.
            self._ended = True
        return event

    async def next(self) -> Event | None:
        """The next event, or None after the last (the :class:`ExecExit`).

        Raises:
            ServiceError: What the exec raised (not found, engine lost, ...).
        """
        # The caller's context variables go along (the engine calls' spans
        # are children of the Exec's server span); a fresh copy per step, as
        # one context cannot be entered by two threads.
        step = self._pool.submit(contextvars.copy_context().run, self._next)
        self._step = step
        # A cancel of this await cancels a step still queued (then it never
        # runs); a running one is left to abandon().
        return await asyncio.wrap_future(step)

    def abandon(self) -> None:
        """Kills the command unless the stream ended; idempotent, safe from any thread."""
        with self._lock:
            if self._abandoned:
                return
            self._abandoned = True
            if self._ended:
                return
            cancel, step = self._cancel, self._step
        self._cancels.submit(self._stop, cancel, step)

    def _stop(
        self, cancel: Callable[[], None] | None, step: futures.Future[Event | None] | None
    ) -> None:
        if cancel is not None:
            cancel()  # kills the tree and closes the socket: a blocked step returns
        if step is not None:
            done, _ = futures.wait([step], timeout=STEP_WAIT_SECONDS)
            if not done:
                log.error("an abandoned exec's reader did not return; leaving it")
                return
        # A generator cannot be closed while a step runs it; now none does.
        # Its finally stops the command if it had not finished.
        self._events.close()
