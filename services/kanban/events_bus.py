"""Live delivery for WatchEvents and long-polling ClaimTask.

Watchers never receive events from the bus itself: they read the event log
and use the bus only to learn *when* to read again. Local commits ring it at
once (:meth:`Database.on_commit`); on PostgreSQL a poller thread also reads
the newest event id every ``poll_interval`` seconds so another replica's
events arrive too. Reading from the log keeps the stream exactly the log:
in id order, nothing lost or repeated, however many replicas write.
"""

from __future__ import annotations

import logging
import threading

from services.kanban.db import Database
from services.kanban.store import events

log = logging.getLogger(__name__)


class EventBus:
    """A version counter that rings whenever the event log may have grown.

    Args:
        db: The database; the bus subscribes to its commits.
        poll_interval: Seconds between polls of the newest event id (for
            other processes' writes); None = no poller.
    """

    def __init__(self, db: Database, *, poll_interval: float | None = None) -> None:
        self._db = db
        self._cond = threading.Condition()
        self._version = 0
        self._closed = False
        self._poll_interval = poll_interval
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        db.on_commit(self.notify)

    @property
    def version(self) -> int:
        """The current version; pass it to :meth:`wait`."""
        with self._cond:
            return self._version

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def notify(self) -> None:
        """Ring the bus: the log may have grown."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Wait until the version moves past ``seen``, the bus closes, or ``timeout``.

        Returns:
            The current version.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._version != seen or self._closed, timeout)
            return self._version

    def start(self) -> None:
        """Start the poller thread, if configured."""
        if self._poll_interval is None or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll, name="kanban-event-poll", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Wake every waiter for good and stop the poller."""
        self._stop.set()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _poll(self) -> None:
        assert self._poll_interval is not None
        last = -1
        while not self._stop.wait(self._poll_interval):
            try:
                with self._db.read() as session:
                    newest = events.last_event_id(session)
            except Exception:
                log.warning("event poll failed", exc_info=True)
                continue
            if newest != last:
                last = newest
                self.notify()
