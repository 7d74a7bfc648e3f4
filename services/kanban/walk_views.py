"""The walk's tasks (every ready and todo one), kept per replica and refreshed from the event log.

Every tick, dry run and readiness plan walks every ready and todo task. Read
whole, that is 10,000 rows on a big board: half a tick. The planner needs
those rows as they are now, and they change only by writes, and every write
to a task appends an event naming it in the same transaction. So a replica
keeps the views (:class:`WalkViews`) with the event id they are complete
up to (the *cursor*), and each use reads only the tasks named by the events
since: on a board where a tick claims a hundred tasks, a hundred rows.

Which ids are settled:

- PostgreSQL: writers commit out of id order, so the cursor only moves to
  the event log's watermark (:class:`~services.kanban.store.events.Watermark`,
  what WatchEvents delivers up to). An event above it is read again later;
  reading a newer row than the cursor says is harmless, as every read sees
  committed rows only (read committed).
- SQLite: one writer, ids commit in order, but a read transaction keeps the
  snapshot of its first read. So the mark is the newest id *this* session
  sees, and a session whose snapshot is older than the cache reads the walk
  whole, for itself, and leaves the cache alone.

A full read replaces the cache when the cache is empty, when more than
:data:`MAX_CHANGED` tasks changed since, and at least every
:data:`REBUILD_SECONDS`, which bounds what a write that forgot its event
could ever cost (the integration suite checks that none does:
``test_kanban_walk_views.py``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import DateTime, Engine, String, bindparam, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from services.kanban.models import Task, TaskEvent
from services.kanban.planner import TaskView
from services.kanban.store import events
from services.kanban.vocabulary import TaskStatus

#: Statuses the walk reads.
WALKED = (TaskStatus.READY, TaskStatus.TODO)
#: More changed tasks than this since the cursor: read the walk whole instead.
MAX_CHANGED = 2000
#: Seconds after which a cache is read whole again, however few events came.
REBUILD_SECONDS = 60.0
#: Task ids per re-read statement.
CHUNK = 500

_STATUS = {status.value: status for status in TaskStatus}
_WALKED_VALUES = frozenset(s.value for s in WALKED)


def task_columns(dialect: str) -> tuple[Any, ...]:
    """The columns a view is built from, in :func:`view_of`'s order.

    The hot path reads 10,000 rows: skip the ORM and the aware-UTC type
    decorator. The planner only compares create times within one snapshot,
    so SQLite's naive UTC text (parsed in C) and PostgreSQL's aware values
    (decoded by psycopg) both work, as long as one snapshot uses one kind.
    """
    created: Any = (
        type_coerce(Task.create_time, String)
        if dialect == "sqlite"
        else type_coerce(Task.create_time, DateTime(timezone=True))
    )
    retry_at: Any = (
        type_coerce(Task.next_attempt_time, String)
        if dialect == "sqlite"
        else type_coerce(Task.next_attempt_time, DateTime(timezone=True))
    )
    return (
        Task.task_id,
        Task.board_id,
        Task.status,
        Task.assignee,
        Task.priority,
        created,
        Task.failure_count,
        Task.breaker_open,
        Task.blocked_reason,
        retry_at,
    )


def aware(value: Any) -> dt.datetime | None:
    """A stored time as aware UTC (SQLite hands back naive UTC text)."""
    if value is None:
        return None
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def view_of(row: Sequence[Any], waiting_on: tuple[str, ...] = ()) -> TaskView:
    """The planner's view of one row of :func:`task_columns`."""
    task_id, board_id, status, assignee, priority, created, failures, breaker, reason, at = row
    return TaskView(
        task_id,
        board_id,
        _STATUS[status],
        assignee or "",
        priority,
        dt.datetime.fromisoformat(created) if isinstance(created, str) else created,
        waiting_on,
        failures,
        bool(breaker),
        reason or "",
        None if at is None else aware(at),
    )


def rows_of(conn: Connection, task_ids: Sequence[str]) -> list[Any]:
    """The :func:`task_columns` of these tasks (whatever their status), in chunks."""
    columns = task_columns(conn.dialect.name)
    rows: list[Any] = []
    for start in range(0, len(task_ids), CHUNK):
        chunk = list(task_ids[start : start + CHUNK])
        rows += conn.execute(select(*columns).where(Task.task_id.in_(chunk))).all()
    return rows


#: The walk's statement as SQL text, per dialect (it has no parameters).
_WALKED_SQL: dict[str, str] = {}


def walked_rows(conn: Connection) -> list[Any]:
    """Every ready and todo task's columns, as the driver's plain tuples.

    SQLAlchemy's result rows cost ~5 ms more than the driver's tuples at
    10,000 rows. The statement is constant, so it is compiled once per
    dialect; its values need no processing (see :func:`task_columns`).
    Statement events (and so their spans) still fire.
    """
    dialect = conn.dialect.name
    sql = _WALKED_SQL.get(dialect)
    if sql is None:
        stmt = select(*task_columns(dialect)).where(Task.status.in_(WALKED))
        sql = str(
            stmt.compile(
                dialect=conn.dialect,
                compile_kwargs={"literal_binds": True, "render_postcompile": True},
            )
        )
        _WALKED_SQL[dialect] = sql
    result = conn.exec_driver_sql(sql)
    try:
        return list(result.cursor.fetchall()) if result.cursor is not None else []
    finally:
        result.close()


def _whole(rows: Iterable[Sequence[Any]]) -> dict[str, TaskView]:
    return {row[0]: view_of(row) for row in rows}


_CHANGED = (
    select(TaskEvent.task_id)
    .where(TaskEvent.event_id > bindparam("after"), TaskEvent.event_id <= bindparam("upto"))
    .distinct()
)


class WalkViews:
    """One replica's views of the walk's tasks, as of an event id (see the module docstring).

    Args:
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._views: dict[str, TaskView] | None = None
        self._cursor = 0
        self._read_at = 0.0
        #: Whole reads and incremental refreshes so far (tests read them).
        self.whole_reads = 0
        self.refreshes = 0

    def current(self, session: Session) -> dict[str, TaskView]:
        """Every ready and todo task's view (without ``waiting_on``), a copy the caller owns."""
        conn = session.connection()
        if session.info.get(events.ADDED_EVENTS) or session.new or session.dirty or session.deleted:
            # This transaction's own writes would be read as if committed
            # (and could still roll back): read for itself.
            self.whole_reads += 1
            return _whole(walked_rows(conn))
        with self._lock:
            mark = self._mark(session)
            if mark < self._cursor:
                # An older snapshot than the cache (SQLite): read for itself.
                self.whole_reads += 1
                return _whole(walked_rows(conn))
            stale = self._views is None or self._clock() - self._read_at > REBUILD_SECONDS
            if not stale and mark > self._cursor:
                changed = [
                    t for t in session.scalars(_CHANGED, {"after": self._cursor, "upto": mark}) if t
                ]
                stale = len(changed) > MAX_CHANGED
                if not stale:
                    assert self._views is not None
                    self._refresh(conn, changed)
            if stale:
                self._views = _whole(walked_rows(conn))
                self._read_at = self._clock()
                self.whole_reads += 1
            self._cursor = mark
            assert self._views is not None
            return dict(self._views)

    def _refresh(self, conn: Connection, changed: list[str]) -> None:
        assert self._views is not None
        found = {row[0]: row for row in rows_of(conn, changed)}
        for task_id in changed:
            row = found.get(task_id)
            if row is not None and row[2] in _WALKED_VALUES:
                self._views[task_id] = view_of(row)
            else:
                self._views.pop(task_id, None)  # deleted, or out of the walk
        self.refreshes += 1

    @staticmethod
    def _mark(session: Session) -> int:
        """The event id every change up to which this session's reads will see."""
        if session.get_bind().dialect.name == "postgresql":
            return events.watermark_of(session).advance(session)
        return events.last_event_id(session)


_caches: weakref.WeakKeyDictionary[Pool, WalkViews] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def walk_views_of(session: Session) -> WalkViews:
    """The walk views of the session's database handle: one per replica.

    Keyed by the connection pool, which reads and writes share: their
    sessions are bound to different option engines of one engine, and a
    cache per engine object kept the walk twice (ticks write, plans read).
    """
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    with _caches_lock:
        found = _caches.get(engine.pool)
        if found is None:
            found = _caches[engine.pool] = WalkViews()
        return found
