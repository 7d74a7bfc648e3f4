"""The append-only event log."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.kanban.models import TaskEvent, utcnow


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
        payload: Kind-specific details (JSON-serializable).
        run_id: The run concerned, when any.
        now: Event time; defaults to now.
        flush: Flush at once so the event has its id (batches pass False
            and flush once).

    Returns:
        The new event row.
    """
    event = TaskEvent(
        task_id=task_id,
        board_id=board_id,
        kind=kind,
        source=source,
        payload=payload or {},
        run_id=run_id,
        create_time=now or utcnow(),
    )
    session.add(event)
    if flush:
        session.flush()
    return event


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
