"""The append-only event log."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.kanban import commits, limits
from services.kanban.models import TaskEvent, utcnow

#: Longest string kept in a payload that is over :data:`limits.EVENT_PAYLOAD_BYTES`.
PAYLOAD_TEXT_CHARS = 1024


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
