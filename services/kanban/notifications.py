"""PostgreSQL LISTEN/NOTIFY between kanban replicas: who changed what, across processes.

A write transaction that appended events sends ``NOTIFY`` on
:data:`EVENTS_CHANNEL` with the profiles it touched; one that appended run
output sends the run ids on :data:`OUTPUT_CHANNEL` (see
:meth:`services.kanban.db.Database.write`). The notification is sent inside
the transaction, so PostgreSQL delivers it exactly when (and only if) the
transaction commits. Each replica keeps one listening connection
(:class:`Listener`) that turns notifications back into
:class:`~services.kanban.commits.Commit` records for its local event bus.

Payload: ``<origin> <name>,<name>,...`` where ``origin`` identifies the
sending process (a replica skips its own: its commits rang its bus already)
and the names are profiles or run ids, or ``*`` when there are too many to
list (PostgreSQL caps a payload at 8000 bytes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import psycopg

from services.kanban.commits import WILDCARD, Commit

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "longshore_kanban_events"
OUTPUT_CHANNEL = "longshore_kanban_output"
#: ``application_name`` of the listening connection (operators find it in pg_stat_activity).
APPLICATION_NAME = "longshore-kanban-listen"
#: Longest list of names sent; beyond it the payload is the wildcard.
MAX_PAYLOAD_CHARS = 4000
#: Longest a listener blocks waiting for a notification before it checks for stop.
LISTEN_SLICE_SECONDS = 1.0
RECONNECT_INITIAL_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0


def payload(origin: str, names: Iterable[str]) -> str:
    """The NOTIFY payload for ``names`` sent by ``origin`` (bounded)."""
    listed = ",".join(sorted(names))
    if len(listed) > MAX_PAYLOAD_CHARS:
        listed = WILDCARD
    return f"{origin} {listed}"


def parse(channel: str, text: str) -> tuple[str, Commit | None]:
    """The origin and the :class:`Commit` a notification stands for (None: not ours)."""
    origin, _, listed = text.partition(" ")
    names = frozenset(n for n in listed.split(",") if n)
    if channel == EVENTS_CHANNEL:
        # Sent for a profile change too (no event): re-reading the log then
        # costs a watcher one empty read, rarely.
        return origin, Commit(added_events=True, profiles=names)
    if channel == OUTPUT_CHANNEL:
        return origin, Commit(output_runs=names)
    return origin, None


class Listener:
    """One listening connection per replica, in its own thread, rung into ``deliver``.

    Args:
        conninfo: A libpq connection string or URL for psycopg.
        origin: This process's origin token; its own notifications are skipped.
        deliver: Receives each other replica's commit (on the listener thread).
    """

    def __init__(self, conninfo: str, *, origin: str, deliver: Callable[[Commit], None]) -> None:
        self._conninfo = conninfo
        self._origin = origin
        self._deliver = deliver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once the first LISTEN is in place (tests wait on it, never on a timer).
        self.listening = threading.Event()
        #: Successful (re)connections so far.
        self.connections = 0

    def start(self) -> None:
        """Start the listening thread (a second call does nothing)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="kanban-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; returns within about one listen slice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_SLICE_SECONDS + 5)

    def _run(self) -> None:
        delay = RECONNECT_INITIAL_SECONDS
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=APPLICATION_NAME,
                ) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    conn.execute(f"LISTEN {OUTPUT_CHANNEL}")
                    self.connections += 1
                    if self.connections > 1:
                        # Notifications sent while the connection was down are
                        # lost for good: ring everything once, so every waiter
                        # reads again.
                        log.info("listening again after a reconnect")
                        self._deliver(Commit.everything())
                    self.listening.set()
                    delay = RECONNECT_INITIAL_SECONDS
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=LISTEN_SLICE_SECONDS):
                            origin, commit = parse(note.channel, note.payload)
                            if commit is not None and origin != self._origin:
                                self._deliver(commit)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                log.warning("listen connection lost; reconnecting: %s", exc)
                self._stop.wait(delay)
                delay = min(RECONNECT_MAX_SECONDS, delay * 2)
