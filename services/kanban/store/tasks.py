"""Tasks: create, read, list, update, move along the transition table, assign,
block, link, delete. The transition table here is the one in task.proto.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from services.kanban import limits, secrets
from services.kanban.models import (
    Board,
    Comment,
    Profile,
    RunOutput,
    Task,
    TaskLink,
    TaskRun,
    utcnow,
)
from services.kanban.store import Effects, Release, events, lifecycle, links, new_id
from services.kanban.vocabulary import TaskStatus
from services.runtime.errors import (
    AlreadyExists,
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
CREATE_STATUSES = frozenset({TaskStatus.TRIAGE, TaskStatus.TODO, TaskStatus.READY})
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
MAX_TITLE = limits.TEXTS["title"].size
MAX_REQUEST_ID = limits.TEXTS["request_id"].size

# The lifecycle's functions, under the names the servicers know them by.
get = lifecycle.get
set_status = lifecycle.set_status
cancel_current_run = lifecycle.cancel_current_run


def _validate(values: dict[str, Any]) -> None:
    if "title" in values:
        title = values["title"]
        if not title.strip():
            raise InvalidArgument("task.title: required")
        if len(title) > MAX_TITLE:
            raise InvalidArgument(f"task.title: at most {MAX_TITLE} characters")
    if "command" in values and any(not isinstance(a, str) for a in values["command"]):
        raise InvalidArgument("task.command: every argument must be a string")
    runtime = values.get("max_runtime_seconds")
    if runtime is not None and runtime <= 0:
        raise InvalidArgument("task.max_runtime: must be positive")


def create(
    session: Session,
    *,
    values: dict[str, Any],
    parents: Sequence[str],
    request_id: str,
    source: str,
    effects: Effects,
) -> tuple[Task, bool]:
    """Create a task, or return the one an earlier call with ``request_id`` made.

    Args:
        session: The caller's write session.
        values: Column values: board_id, title, status and the optional fields.
        parents: Parent task ids to wait for.
        request_id: Idempotency key; empty = none.
        source: Event source.
        effects: Collects the dispatcher wake-up.

    Returns:
        The task and whether it was deduplicated.

    Raises:
        InvalidArgument: Bad title, status, parents or command.
        NotFound: The board or a parent does not exist.
        AlreadyExists: ``request_id`` was used for another board.
    """
    board_id = values.get("board_id") or "default"
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument(f"request_id: at most {MAX_REQUEST_ID} characters")
    if request_id:
        existing = session.scalar(select(Task).where(Task.request_id == request_id))
        if existing is not None:
            if existing.board_id != board_id:
                raise AlreadyExists(f"request_id {quote(request_id)} was used for another board")
            return existing, True
    _validate({"title": values.get("title", ""), **values})
    status = values.get("status") or TaskStatus.READY
    if status not in CREATE_STATUSES:
        raise InvalidArgument(
            "task.status: must be TaskStatus.TRIAGE, TaskStatus.TODO or TaskStatus.READY on create"
        )
    if session.get(Board, board_id) is None:
        raise NotFound(f"board {quote(board_id)} not found")
    unique_parents = list(dict.fromkeys(parents))
    for parent in unique_parents:
        if not parent:
            raise InvalidArgument("parent_ids: empty id")
        if session.get(Task, parent) is None:
            raise NotFound(f"parent task {quote(parent)} not found")
    now = utcnow()
    task = Task(**{**values, "board_id": board_id, "status": status})
    task.task_id = new_id("t")
    task.request_id = request_id or None
    task.create_time = task.update_time = now
    open_parents = [
        p
        for p in unique_parents
        if session.get(Task, p).status != TaskStatus.DONE  # type: ignore[union-attr]
    ]
    if status == TaskStatus.READY and open_parents:
        task.status = TaskStatus.TODO
    task.ready_time = now if task.status == TaskStatus.READY else None
    session.add(task)
    for parent in unique_parents:
        session.add(TaskLink(parent_id=parent, child_id=task.task_id))
    session.flush()
    events.append(
        session,
        task_id=task.task_id,
        board_id=board_id,
        kind="created",
        source=source,
        payload={
            "title": task.title,
            "status": task.status,
            "assignee": task.assignee or "",
            "parent_ids": unique_parents,
        },
        now=now,
    )
    effects.wake = effects.wake or task.status in (TaskStatus.READY, TaskStatus.TODO)
    return task, False


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
    _validate(values)
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
    if assignee and session.get(Profile, assignee) is None:
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
        profile = session.get(Profile, task.assignee)
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
