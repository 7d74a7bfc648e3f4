"""Comments on tasks."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from services.kanban import limits
from services.kanban.models import Comment, utcnow
from services.kanban.store import events, new_id, tasks
from services.runtime.errors import InvalidArgument

MAX_BODY_BYTES = limits.TEXTS["body"].size


def add(session: Session, *, task_id: str, author: str, body: str, source: str) -> Comment:
    """Add a comment and a ``commented`` event.

    Raises:
        InvalidArgument: Empty or oversized body.
        NotFound: No such task.
    """
    if not body.strip():
        raise InvalidArgument("body: required")
    if len(body.encode()) > MAX_BODY_BYTES:
        raise InvalidArgument(f"body: at most {MAX_BODY_BYTES} bytes")
    task = tasks.get(session, task_id)
    now = utcnow()
    comment = Comment(
        comment_id=new_id("c"), task_id=task_id, author=author, body=body, create_time=now
    )
    session.add(comment)
    events.append(
        session,
        task_id=task_id,
        board_id=task.board_id,
        kind="commented",
        source=source,
        payload={"comment_id": comment.comment_id, "author": author},
        now=now,
    )
    return comment


def list_comments(
    session: Session, task_id: str, *, after: tuple[dt.datetime, str] | None, limit: int
) -> list[Comment]:
    """Return a task's comments, oldest first, after the (time, id) key."""
    tasks.get(session, task_id)
    stmt = select(Comment).where(Comment.task_id == task_id)
    if after is not None:
        t, cid = after
        stmt = stmt.where(
            or_(Comment.create_time > t, and_(Comment.create_time == t, Comment.comment_id > cid))
        )
    return list(
        session.scalars(stmt.order_by(Comment.create_time, Comment.comment_id).limit(limit))
    )
