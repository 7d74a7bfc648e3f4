"""The append-only event log, and the watermark up to which it may be read.

Event ids are the WatchEvents cursor: every watcher must see every event
once, in id order. On PostgreSQL writers no longer commit one at a time, so a
transaction holding a smaller id can commit after one holding a larger id; a
watcher that read up to the larger id and moved its cursor past the smaller
one would lose it for good. So watchers read only up to a *watermark* below
which every id is settled (committed or rolled back, never to appear later):

- the gate: every transaction that appends events first takes a *shared*
  transaction-scoped advisory lock G, before its first ``nextval`` of the
  event id sequence (:func:`enter_gate`; shared, so writers never wait on
  each other for it, and nobody ever takes it exclusively);
- the reader (:class:`Watermark`, one per replica): reads the sequence's
  ``last_value`` L, *then* the set S of transactions holding G (``pg_locks``).
  A transaction with an id <= L called ``nextval`` before L was read, so it
  held G then: it is in S, or it has already ended. Once a later read of
  ``pg_locks`` shows none of S (virtual transaction ids are never reused
  while the server runs), every id <= L is settled and the watermark is L.
  PostgreSQL releases a transaction's locks only after its commit is visible
  to new snapshots, so a later statement sees all of them.

Several (L, S) candidates are kept in flight so the watermark keeps moving
under constant load (each candidate waits only for the writers that were
open when it was taken, not for every writer that comes after). The sequence
must not cache values per session (``CACHE 1``, the ``BIGSERIAL`` default):
a cached id could be handed out after L was read without a fresh ``nextval``.

On SQLite there is one writer, so ids commit in order and the watermark is
simply the newest id.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Engine, Table, func, insert, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from services.kanban import commits, limits
from services.kanban.models import TaskEvent, utcnow

#: Longest string kept in a payload that is over :data:`limits.EVENT_PAYLOAD_BYTES`.
PAYLOAD_TEXT_CHARS = 1024
#: Advisory lock class (first key; second key 0) of the event gate G.
EVENT_GATE_CLASS = 0x4C6F6E69
#: ``session.info`` key: this transaction has entered the gate (and appends events).
ADDED_EVENTS = "added_events"
#: (L, S) candidates a watermark keeps in flight; past it, new ones wait.
MAX_CANDIDATES = 16

_HOLDERS = text(
    "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'advisory'"
    " AND classid = :cls AND objid = 0 AND objsubid = 2 AND granted"
)
# BIGSERIAL's sequence (migration 0001); read outside MVCC, so it is the
# newest id handed out by any session, committed or not.
_LAST_VALUE = text("SELECT last_value, is_called FROM task_events_event_id_seq")


def enter_gate(session: Session) -> None:
    """Take the shared event gate, once per transaction, before the first event id.

    Every writer of events must pass here before its first insert into
    ``task_events`` (:func:`append` and :func:`append_many` do); see the
    module docstring. Not inside a savepoint: rolling one back releases the
    locks taken in it, while the flag below would say the gate is held.
    """
    if session.info.get(ADDED_EVENTS):
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock_shared(:cls, 0)"), {"cls": EVENT_GATE_CLASS}
        )
    session.info[ADDED_EVENTS] = True


def gate_column(session: Session) -> ColumnElement[Any] | None:
    """A column that enters the gate when selected, to fold :func:`enter_gate` into a read.

    None when there is nothing to enter: not PostgreSQL, or entered already.
    A caller that selects it must call :func:`gate_entered` once the
    statement has run.
    """
    if session.info.get(ADDED_EVENTS) or session.get_bind().dialect.name != "postgresql":
        return None
    return func.pg_advisory_xact_lock_shared(EVENT_GATE_CLASS, 0)


def gate_entered(session: Session) -> None:
    """Mark ``session``: a statement with :func:`gate_column` has run (the gate is held)."""
    session.info[ADDED_EVENTS] = True


def _size(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload, separators=(",", ":"), default=str).encode())


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > PAYLOAD_TEXT_CHARS:
        return value[:PAYLOAD_TEXT_CHARS] + "…"
    if isinstance(value, list):
        return [_shorten(v) for v in value[:100]]
    if isinstance(value, dict):
        return {str(k)[:PAYLOAD_TEXT_CHARS]: _shorten(v) for k, v in list(value.items())[:100]}
    return value


def bounded(payload: dict[str, Any]) -> dict[str, Any]:
    """Return ``payload`` within :data:`limits.EVENT_PAYLOAD_BYTES` serialized.

    Payloads are built by the service from bounded request fields, so this
    rarely cuts anything; it guarantees that no event, and so no event page,
    can grow past the budget whatever a caller sends (events are never deleted).
    Long strings are cut first; a payload still too big keeps only its keys.
    """
    if _size(payload) <= limits.EVENT_PAYLOAD_BYTES:
        return payload
    shortened = _shorten(payload)
    if _size(shortened) <= limits.EVENT_PAYLOAD_BYTES:
        return dict(shortened, truncated=True)
    return {"truncated": True, "keys": sorted(str(k)[:64] for k in payload)[:100]}


def append(
    session: Session,
    *,
    task_id: str,
    board_id: str,
    kind: str,
    source: str,
    payload: dict[str, Any] | None = None,
    run_id: str = "",
    now: dt.datetime | None = None,
    flush: bool = True,
) -> TaskEvent:
    """Append one event and flush so it has its id.

    Args:
        session: The caller's write session.
        task_id: The task the event is about.
        board_id: Its board.
        kind: What happened (``created``, ``moved``, ...).
        source: Who caused it (``api``, ``kanban.dispatcher``, ``worker:<id>``).
        payload: Kind-specific details (JSON-serializable); cut to
            :data:`limits.EVENT_PAYLOAD_BYTES` by :func:`bounded`.
        run_id: The run concerned, when any.
        now: Event time; defaults to now.
        flush: Flush at once so the event has its id (batches pass False
            and flush once).

    Returns:
        The new event row.
    """
    enter_gate(session)
    event = TaskEvent(
        task_id=task_id,
        board_id=board_id,
        kind=kind,
        source=source,
        payload=bounded(payload or {}),
        run_id=run_id,
        create_time=now or utcnow(),
    )
    session.add(event)
    commits.note_event(session, task_id, run_id)
    if flush:
        session.flush()
    return event


def append_many(session: Session, rows: Sequence[dict[str, Any]], *, now: dt.datetime) -> None:
    """Append many events in one INSERT (a tick's bucket); their ids are not read back.

    Args:
        session: The caller's write session.
        rows: One mapping per event with ``task_id``, ``board_id``, ``kind``,
            ``source`` and optionally ``payload`` and ``run_id``.
        now: Every event's time.
    """
    if not rows:
        return
    enter_gate(session)
    # Rings the bus after commit like append() (watchers, run streams, polls).
    for r in rows:
        commits.note_event(session, r["task_id"], r.get("run_id", ""))
    # The Core table, not the ORM entity: no unit-of-work bookkeeping for
    # rows nobody reads back (a tick appends up to one per spawn).
    session.execute(
        insert(cast(Table, TaskEvent.__table__)),
        [
            {
                "task_id": r["task_id"],
                "board_id": r["board_id"],
                "kind": r["kind"],
                "source": r["source"],
                "payload": bounded(r.get("payload") or {}),
                "run_id": r.get("run_id", ""),
                "create_time": now,
            }
            for r in rows
        ],
    )


def list_events(
    session: Session,
    *,
    after_event_id: int = 0,
    task_id: str = "",
    board_id: str = "",
    limit: int = 100,
) -> list[TaskEvent]:
    """Return events with an id above ``after_event_id``, in id order."""
    stmt = select(TaskEvent).where(TaskEvent.event_id > after_event_id)
    if task_id:
        stmt = stmt.where(TaskEvent.task_id == task_id)
    if board_id:
        stmt = stmt.where(TaskEvent.board_id == board_id)
    return list(session.scalars(stmt.order_by(TaskEvent.event_id).limit(limit)))


def last_event_id(session: Session) -> int:
    """Return the largest event id, 0 when the log is empty."""
    return int(session.scalar(select(func.max(TaskEvent.event_id))) or 0)


def has_event(session: Session, *, run_id: str, kind: str) -> bool:
    """Return whether the run already has an event of ``kind``."""
    stmt = select(TaskEvent.event_id).where(TaskEvent.run_id == run_id, TaskEvent.kind == kind)
    return session.scalar(stmt.limit(1)) is not None


class Watermark:
    """The highest event id below which every id is settled, for one replica.

    One per engine (see :func:`watermark_of`): every watcher of a replica
    shares it, so the two reads behind it happen once per wake-up, not once
    per watcher.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0
        # (L, S): ids <= L are settled once no member of S holds the gate.
        self._candidates: deque[tuple[int, frozenset[str]]] = deque()
        self._refreshed_at = -1.0

    def advance(self, session: Session) -> int:
        """Read the database and return the watermark (never lower than before).

        Concurrent callers coalesce: one that waited on the lock while another
        refreshed reuses that refresh, which started after it asked and so
        already reflects every commit it could wait for.

        Args:
            session: A read (or write) session of this replica.
        """
        asked = time.monotonic()
        with self._lock:
            if self._refreshed_at >= asked:
                return self._value
            self._refreshed_at = time.monotonic()
            if session.get_bind().dialect.name != "postgresql":
                # One writer: ids commit in order, the newest is the watermark.
                self._value = max(self._value, last_event_id(session))
                return self._value
            self._value = self._refresh(session)
            return self._value

    def _refresh(self, session: Session) -> int:
        last_value, is_called = session.execute(_LAST_VALUE).one()
        newest = int(last_value) if is_called else 0
        # Read after L, never before: a writer that got an id <= L held the
        # gate when L was read, so it is in this set or has ended.
        holders = frozenset(session.scalars(_HOLDERS, {"cls": EVENT_GATE_CLASS}))
        settled = self._value
        waiting: deque[tuple[int, frozenset[str]]] = deque()
        for bound, members in self._candidates:
            if members.isdisjoint(holders):
                settled = max(settled, bound)
            else:
                waiting.append((bound, members))
        if not holders:
            settled = max(settled, newest)  # nobody could still hold an id <= L
        elif (
            newest > settled
            and len(waiting) < MAX_CANDIDATES
            and (not waiting or waiting[-1][0] < newest)
        ):
            waiting.append((newest, holders))
        self._candidates = deque(c for c in waiting if c[0] > settled)
        return settled


_watermarks: weakref.WeakKeyDictionary[Pool, Watermark] = weakref.WeakKeyDictionary()
_watermarks_lock = threading.Lock()


def watermark_of(session: Session) -> Watermark:
    """The watermark of the session's database handle: one per replica.

    Keyed by the connection pool, which the read and write option engines
    of one engine share (a tick reads it in a write session, watchers in
    reads).
    """
    engine = session.get_bind()
    assert isinstance(engine, Engine)  # sessions are bound to an engine, never a connection
    with _watermarks_lock:
        found = _watermarks.get(engine.pool)
        if found is None:
            found = _watermarks[engine.pool] = Watermark()
        return found


def deliverable_events(
    session: Session,
    *,
    after_event_id: int,
    limit: int,
    task_id: str = "",
    board_id: str = "",
    watermark: Watermark | None = None,
) -> list[TaskEvent]:
    """Events in ``(after_event_id, watermark]`` in id order: what a watcher may deliver.

    Everything returned is settled: no event with a smaller id can commit
    later, so a watcher may move its cursor to the last one returned and will
    see every event exactly once. An event not returned yet is returned by a
    later call (the watermark only grows, and reaches every committed id once
    its writers have ended).

    Args:
        session: A read session.
        after_event_id: The watcher's cursor.
        limit: At most this many events.
        task_id: Only this task's events.
        board_id: Only this board's events.
        watermark: The replica's watermark; default :func:`watermark_of`.
    """
    upto = (watermark or watermark_of(session)).advance(session)
    if upto <= after_event_id:
        return []
    stmt = select(TaskEvent).where(TaskEvent.event_id > after_event_id, TaskEvent.event_id <= upto)
    if task_id:
        stmt = stmt.where(TaskEvent.task_id == task_id)
    if board_id:
        stmt = stmt.where(TaskEvent.board_id == board_id)
    return list(session.scalars(stmt.order_by(TaskEvent.event_id).limit(limit)))
