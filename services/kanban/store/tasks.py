"""Tasks: read, list, update, move along the transition table, assign,
block, link, delete. The transition table here is the one in task.proto.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from services.kanban import secrets
from services.kanban.models import (
    Comment,
    Profile,
    RunOutput,
    Task,
    TaskLink,
    TaskRun,
    utcnow,
)
from services.kanban.store import Effects, Release, creates, events, keys, lifecycle, links
from services.kanban.vocabulary import TaskStatus
from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    quote,
)

TRANSITIONS: dict[str, frozenset[str]] = {
    TaskStatus.TRIAGE: frozenset({TaskStatus.TODO, TaskStatus.READY, TaskStatus.ARCHIVED}),
    TaskStatus.TODO: frozenset(
        {TaskStatus.READY, TaskStatus.BLOCKED, TaskStatus.ARCHIVED, TaskStatus.TRIAGE}
    ),
    TaskStatus.READY: frozenset(
        {TaskStatus.TODO, TaskStatus.RUNNING, TaskStatus.BLOCKED, TaskStatus.ARCHIVED}
    ),
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.READY, TaskStatus.DONE, TaskStatus.BLOCKED, TaskStatus.ARCHIVED}
    ),
    TaskStatus.BLOCKED: frozenset({TaskStatus.READY, TaskStatus.TODO, TaskStatus.ARCHIVED}),
    TaskStatus.DONE: frozenset({TaskStatus.ARCHIVED, TaskStatus.READY}),
    TaskStatus.ARCHIVED: frozenset(),
}
UPDATABLE_FIELDS = frozenset(
    {
        "title",
        "description",
        "priority",
        "command",
        "image",
        "env",
        "max_runtime_seconds",
        "labels",
    }
)

# The lifecycle's functions, under the names the servicers know them by.
get = lifecycle.get
set_status = lifecycle.set_status
cancel_current_run = lifecycle.cancel_current_run


def ready_counts(session: Session) -> dict[str, int]:
    """Ready tasks per assignee ("" = unassigned): the queue depth a scrape reports."""
    stmt = (
        select(Task.assignee, func.count())
        .where(Task.status == TaskStatus.READY)
        .group_by(Task.assignee)
    )
    return {assignee or "": int(n) for assignee, n in session.execute(stmt)}


def list_tasks(
    session: Session,
    *,
    board_id: str,
    statuses: Sequence[str],
    assignee: str,
    after: tuple[int, dt.datetime, str] | None,
    limit: int,
) -> list[Task]:
    """Return tasks by priority (high first), then age, then id."""
    stmt = select(Task)
    if board_id:
        stmt = stmt.where(Task.board_id == board_id)
    if statuses:
        stmt = stmt.where(Task.status.in_(list(statuses)))
    if assignee:
        stmt = stmt.where(Task.assignee == assignee)
    if after is not None:
        prio, created, tid = after
        stmt = stmt.where(
            or_(
                Task.priority < prio,
                and_(
                    Task.priority == prio,
                    or_(
                        Task.create_time > created,
                        and_(Task.create_time == created, Task.task_id > tid),
                    ),
                ),
            )
        )
    stmt = stmt.order_by(Task.priority.desc(), Task.create_time, Task.task_id).limit(limit)
    return list(session.scalars(stmt))


def update(session: Session, task_id: str, values: dict[str, Any], *, source: str) -> Task:
    """Change the given fields of a task.

    Raises:
        InvalidArgument: A field is unknown or output-only, or a value is bad.
        NotFound: No such task.
    """
    unknown = sorted(set(values) - UPDATABLE_FIELDS)
    if unknown:
        raise InvalidArgument(f"update_mask: {quote(unknown[0])} is unknown or output-only")
    creates.validate(values)
    task = get(session, task_id)
    if "env" in values:
        # `<redacted>` (what every read shows) keeps the stored value.
        values = {**values, "env": secrets.merge(task.env or {}, values["env"], "task.env")}
    for key, value in values.items():
        setattr(task, key, value)
    task.update_time = utcnow()
    events.append(
        session,
        task_id=task_id,
        board_id=task.board_id,
        kind="updated",
        source=source,
        payload={"fields": sorted(values)},
    )
    return task


def move(
    session: Session, task_id: str, status: str, *, reason: str, source: str, effects: Effects
) -> Task:
    """Move a task along the transition table.

    Raises:
        NotFound: No such task.
        FailedPrecondition: The move is not allowed (to running by hand, or to
            ready while parents are not done).
    """
    task = get(session, task_id, for_update=True)
    if status == task.status:
        return task
    if status == TaskStatus.RUNNING:
        raise FailedPrecondition("task status: only a dispatcher or worker claim moves to running")
    if status not in TRANSITIONS[task.status]:
        raise FailedPrecondition(
            f"task {quote(task_id)}: cannot move from {task.status} to {status}"
        )
    if status == TaskStatus.READY:
        pending = links.waiting_on(session, [task_id]).get(task_id, [])
        if pending:
            raise FailedPrecondition(
                f"task {quote(task_id)}: parents not done: {', '.join(pending)}"
            )
    if status == TaskStatus.BLOCKED and not reason.strip():
        reason = "blocked by hand"
    set_status(session, task, status, reason=reason, source=source, effects=effects)
    return task


def assign(session: Session, task_id: str, assignee: str, *, source: str, effects: Effects) -> Task:
    """Set or clear a task's assignee.

    Raises:
        NotFound: No such task or profile.
        FailedPrecondition: The task is running, done or archived.
    """
    task = get(session, task_id, for_update=True)
    if task.status in (TaskStatus.RUNNING, TaskStatus.DONE, TaskStatus.ARCHIVED):
        raise FailedPrecondition(f"task {quote(task_id)} is {task.status}; cannot reassign")
    if assignee and keys.by_key(session, Profile, assignee) is None:
        raise NotFound(f"profile {quote(assignee)} not found")
    previous = task.assignee or ""
    task.assignee = assignee or None
    task.update_time = utcnow()
    effects.wake = effects.wake or task.status == TaskStatus.READY
    events.append(
        session,
        task_id=task_id,
        board_id=task.board_id,
        kind="assigned",
        source=source,
        payload={"from": previous, "to": assignee},
    )
    return task


def block(session: Session, task_id: str, reason: str, *, source: str, effects: Effects) -> Task:
    """Block a task with a reason; a running task's run is cancelled.

    Raises:
        InvalidArgument: Empty reason.
        NotFound: No such task.
        FailedPrecondition: The task is done or archived.
    """
    if not reason.strip():
        raise InvalidArgument("reason: required")
    task = get(session, task_id, for_update=True)
    if task.status in (TaskStatus.DONE, TaskStatus.ARCHIVED):
        raise FailedPrecondition(f"task {quote(task_id)} is {task.status}; cannot block")
    if task.status == TaskStatus.BLOCKED:
        task.blocked_reason = reason
        return task
    set_status(
        session,
        task,
        TaskStatus.BLOCKED,
        reason=reason,
        source=source,
        effects=effects,
        kind="blocked",
    )
    return task


def unblock(session: Session, task_id: str, reason: str, *, source: str, effects: Effects) -> Task:
    """Unblock a task to ready (or todo while parents are not done); reset failures.

    Raises:
        NotFound: No such task.
        FailedPrecondition: The task is not blocked.
    """
    task = get(session, task_id, for_update=True)
    if task.status != TaskStatus.BLOCKED:
        raise FailedPrecondition(f"task {quote(task_id)} is {task.status}, not blocked")
    target = (
        TaskStatus.TODO if links.waiting_on(session, [task_id]).get(task_id) else TaskStatus.READY
    )
    task.failure_count = 0
    set_status(
        session, task, target, reason=reason, source=source, effects=effects, kind="unblocked"
    )
    return task


def delete_task(session: Session, task_id: str, *, source: str, effects: Effects) -> None:
    """Delete a task, its links, comments, runs and output (events stay).

    Raises:
        NotFound: No such task.
    """
    task = get(session, task_id, for_update=True)
    if task.status == TaskStatus.RUNNING:
        cancel_current_run(session, task, reason="task deleted", source=source, effects=effects)
    if task.assignee and task.sandbox_id:
        profile = keys.by_key(session, Profile, task.assignee)
        if profile is not None and not profile.keep_sandbox:
            effects.releases.append(Release(task.task_id, task.assignee, task.sandbox_id))
    run_ids = list(session.scalars(select(TaskRun.run_id).where(TaskRun.task_id == task_id)))
    if run_ids:
        session.execute(delete(RunOutput).where(RunOutput.run_id.in_(run_ids)))
    session.execute(delete(TaskRun).where(TaskRun.task_id == task_id))
    session.execute(delete(Comment).where(Comment.task_id == task_id))
    session.execute(
        delete(TaskLink).where(or_(TaskLink.parent_id == task_id, TaskLink.child_id == task_id))
    )
    events.append(
        session,
        task_id=task_id,
        board_id=task.board_id,
        kind="deleted",
        source=source,
        payload={"title": task.title},
    )
    session.delete(task)
    session.flush()
    effects.wake = True  # its children may now be promotable
