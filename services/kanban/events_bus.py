"""Live delivery for WatchEvents, StreamRunOutput and long-polling ClaimTask.

Watchers never receive data from the bus itself: they read the event log (or
the run's output) and use the bus only to learn *when* to read again. It is
rung with a :class:`~services.kanban.commits.Commit` by every local commit
(:meth:`Database.on_commit`) and, on PostgreSQL, by the other replicas'
commits through LISTEN/NOTIFY (:mod:`services.kanban.notifications`).
Reading from the log keeps a stream exactly the log: in id order, nothing
lost or repeated, however many replicas write.

What rings whom:

- a commit that added events rings every WatchEvents stream (one version
  counter for the whole log);
- a commit that appended output to run R, or an event about R, rings only
  the streams following R (one counter per followed run);
- every ring is handed to the ``on_ring`` subscribers (the ClaimTask lanes of
  :mod:`services.kanban.claim_lanes`, which look at the profiles).

The waiters are coroutines on the aio server's loop. Rings come from other
threads (the pool thread that committed, the listener thread), so a ring only
schedules the wake-up on the loop (``call_soon_threadsafe``); counters and
asyncio events are touched on the loop alone, which is what makes them safe
without a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from services.kanban.commits import WILDCARD, Commit
from services.kanban.db import Database
from services.kanban.notifications import Listener

log = logging.getLogger(__name__)

#: Re-read interval of an idle stream when other processes cannot ring us
#: (SQLite): another process's commits reach it no later than this.
LOCAL_IDLE_SECONDS = 1.0
#: Re-read interval of an idle stream with LISTEN/NOTIFY: only a safety net.
NOTIFIED_IDLE_SECONDS = 30.0


class Signal:
    """A version and an asyncio event replaced at each ring (touched on the loop only)."""

    __slots__ = ("changed", "followers", "version")

    def __init__(self) -> None:
        self.version = 0
        self.changed = asyncio.Event()
        self.followers = 0

    def ring(self) -> None:
        """Move the version and wake everyone waiting on it."""
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


class EventBus:
    """Rings the waiters a commit concerns.

    Args:
        db: The database; the bus subscribes to its commits.
        listen: Listen for the other replicas' commits (PostgreSQL only).
    """

    def __init__(self, db: Database, *, listen: bool = False) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bind_lock = threading.Lock()
        self._closed = False
        self._events: Signal | None = None
        self._runs: dict[str, Signal] = {}
        self._subscribers: list[Callable[[Commit], None]] = []
        #: Rings that may change what a plan sees (events or profiles), local or
        #: another replica's; readable from any thread (see :attr:`generation`).
        self._generation = 0
        self._listener = (
            Listener(db.listen_url(), origin=db.origin, deliver=self.ring)
            if listen and db.is_postgres
            else None
        )
        #: How long an idle stream waits before it reads again without a ring.
        self.idle_seconds = NOTIFIED_IDLE_SECONDS if self._listener else LOCAL_IDLE_SECONDS
        db.on_commit(self.ring)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def listener(self) -> Listener | None:
        """The LISTEN connection, when this bus has one."""
        return self._listener

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver wake-ups on ``loop`` (the aio server's); a second loop is refused."""
        with self._bind_lock:
            if self._loop is not None and self._loop is not loop:
                raise RuntimeError("the event bus already serves another loop")
            self._loop = loop

    def on_ring(self, subscriber: Callable[[Commit], None]) -> None:
        """Call ``subscriber(commit)`` on the loop for every ring (before :meth:`start`)."""
        self._subscribers.append(subscriber)

    @property
    def generation(self) -> int:
        """How many commits that added events or changed profiles were rung so far.

        A kept plan compares it (with the newest event id): on PostgreSQL a
        smaller event id can commit after a larger one, which the newest id
        alone would not show.
        """
        return self._generation

    def ring(self, commit: Commit) -> None:
        """Schedule the wake-ups ``commit`` calls for; safe from any thread."""
        if commit.added_events or commit.profiles:
            # Under the GIL; two rings racing may count once, still a change.
            self._generation += 1
        loop = self._loop
        if loop is None or self._closed or commit == Commit():
            return
        # A closed loop means the server is gone: nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._deliver, commit)

    def _deliver(self, commit: Commit) -> None:
        if commit.added_events and self._events is not None:
            self._events.ring()
        if commit.output_runs:
            if WILDCARD in commit.output_runs:
                followed = list(self._runs.values())
            else:
                followed = [self._runs[r] for r in commit.output_runs if r in self._runs]
            for signal in followed:
                signal.ring()
        for subscriber in self._subscribers:
            try:
                subscriber(commit)
            except Exception:
                log.exception("event bus subscriber failed")

    # -- waiting (on the loop) --------------------------------------------

    def events(self) -> Signal:
        """The event log's signal (rung by every commit that added events)."""
        if self._events is None:
            self.bind(asyncio.get_running_loop())
            self._events = Signal()
        return self._events

    @contextmanager
    def following(self, run_id: str) -> Iterator[Signal]:
        """The signal of ``run_id`` (its output grew, or it gained an event) while it is followed.

        Held for the whole stream, not per wait: a ring between reading the
        version and waiting must find the signal there, or it would be lost.
        """
        self.bind(asyncio.get_running_loop())
        signal = self._runs.get(run_id)
        if signal is None:
            signal = self._runs[run_id] = Signal()
        signal.followers += 1
        try:
            yield signal
        finally:
            signal.followers -= 1
            if signal.followers == 0:
                del self._runs[run_id]

    async def wait(self, signal: Signal, seen: int, timeout: float) -> None:
        """Wait until ``signal`` moved past version ``seen``, the bus closes, or ``timeout``.

        Read ``signal.version`` *before* reading the log, then wait with it:
        a commit between the read and the wait has moved the version, so the
        wait returns at once and nothing is missed.
        """
        if signal.version != seen or self._closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signal.changed.wait(), timeout)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start listening to the other replicas, when configured."""
        if self._listener is not None:
            self._listener.start()

    def close(self) -> None:
        """Wake every waiter for good and stop listening; safe from any thread."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is not None:
            # The loop is closed already when the server stopped first.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, Commit.everything())
        if self._listener is not None:
            self._listener.stop()
